#!/usr/bin/env bash
# Make sure the image's base exists: usage `base-image.sh IMAGE` prints the base to build on.
#
# IMAGE present locally, or pullable (a machine that reaches Docker Hub or a registry mirror):
# IMAGE itself. Otherwise an equivalent base made from Debian packages through this machine's
# own apt sources: debootstrap --variant=minbase bookworm with python3 (3.11), python3-venv and
# ca-certificates, imported as LOCAL_BASE (default mhaserve-base:bookworm-python3.11). It is
# made once and reused; `docker rmi` it to make it again.
#
# Environment: DOCKER (the CLI), LOCAL_BASE, DEBIAN_MIRROR (default: the first bookworm URI of
# /etc/apt/sources.list{,.d/*}), DEBIAN_SUITE (default bookworm).
# Messages go to stderr; stdout carries only the image name.
set -euo pipefail

image=${1:?usage: base-image.sh IMAGE}
docker=${DOCKER:-docker}
local_base=${LOCAL_BASE:-mhaserve-base:bookworm-python3.11}
suite=${DEBIAN_SUITE:-bookworm}

if "$docker" image inspect "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi
if "$docker" pull --quiet "$image" >/dev/null 2>/tmp/mhaserve-pull.$$; then
    rm -f /tmp/mhaserve-pull.$$
    echo "$image"
    exit 0
fi
echo "base image $image cannot be pulled ($(tail -n 1 /tmp/mhaserve-pull.$$))" >&2
rm -f /tmp/mhaserve-pull.$$

if "$docker" image inspect "$local_base" >/dev/null 2>&1; then
    echo "using $local_base, made earlier from Debian $suite packages, instead of $image" >&2
    echo "$local_base"
    exit 0
fi

mirror_from_apt_sources() {
    # deb822 (.sources: "URIs:" then "Suites:") and one-line ("deb URI SUITE ...") formats
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        awk -v suite="$suite" '
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) { print uri; exit } }
            /^$/ { uri = "" }' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$file" ] || continue
        awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }' "$file"
    done
}

mirror=${DEBIAN_MIRROR:-$(mirror_from_apt_sources | head -n 1)}
if [ -z "$mirror" ]; then
    echo "no apt source for Debian $suite found; set DEBIAN_MIRROR=URL (a Debian mirror) or PYTHON_IMAGE" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    echo "debootstrap is missing: apt-get install debootstrap (or set PYTHON_IMAGE to a base you have)" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "making a base with debootstrap needs root (or set PYTHON_IMAGE to a base you have)" >&2
    exit 1
fi

echo "making $local_base from Debian $suite packages (debootstrap, $mirror) instead of $image" >&2
root=$(mktemp -d /tmp/mhaserve-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$root" "$mirror" >&2
# what an image does not need: downloaded packages, package lists, docs, logs of the install
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/var/log/* "$root"/debootstrap
tar -C "$root" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $suite $mirror, python3 python3-venv ca-certificates" \
    - "$local_base" >&2
echo "$local_base"
