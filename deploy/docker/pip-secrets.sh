# Sourced by the Dockerfile's pip steps: the build secrets, when the build passes them, configure
# pip for this step only (they are mounted under /run/secrets, never written to a layer).
#   pip.conf   a pip configuration file (a private index, a proxy): PIP_CONFIG_FILE
#   pip-cert   the CA bundle pip must trust (a TLS-intercepting proxy): PIP_CERT
if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi
if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi
