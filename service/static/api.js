// The page's only way to the server: the public REST API, and its errors in plain words.

export class ApiError extends Error {
  constructor(plainMessage, { status = 0, type = "", serverMessage = "" } = {}) {
    super(plainMessage);
    this.status = status;
    this.type = type;
    this.serverMessage = serverMessage;
  }
}

// What each status means for someone using this page, and what to do about it.
function explainStatus(status, serverMessage, retryAfter) {
  const detail = serverMessage ? ` (The server said: ${serverMessage})` : "";
  switch (status) {
    case 401:
      return "This server needs an API key. Enter it in the \u201cAPI key\u201d field at the top and try again." + detail;
    case 413:
      return "The answer would be too large for this server's limits. Try a shorter text." + detail;
    case 422:
      return "The server could not accept this input." + detail;
    case 429: {
      const wait = retryAfter ? `in ${retryAfter} second${retryAfter === "1" ? "" : "s"}` : "in a moment";
      return `The server is busy right now. Please try again ${wait}.`;
    }
    case 503:
      return "The server is not ready (it is starting up or shutting down). Please try again in a moment.";
    case 504:
      return "The server took too long to answer. Try a shorter text, or try again later.";
    default:
      return `The server answered with an error (HTTP ${status}).` + detail;
  }
}

export class ApiClient {
  constructor() {
    this.apiKey = "";
    this.model = ""; // the embedding model the explorer's views ask (empty: the server's default)
  }

  withModel(body) {
    return this.model ? { ...body, model: this.model } : body;
  }

  async request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (networkError) {
      throw new ApiError("Could not reach the server. Check that it is running and that this page came from it.");
    }
    const payload = await response.json().catch(() => null);
    if (!response.ok) {
      const error = (payload && payload.error) || {};
      const serverMessage = typeof error.message === "string" ? error.message : "";
      const plain = explainStatus(response.status, serverMessage, response.headers.get("Retry-After"));
      throw new ApiError(plain, { status: response.status, type: error.type || "", serverMessage });
    }
    if (payload === null) throw new ApiError("The server's answer was not valid JSON.", { status: response.status });
    return payload;
  }

  models() {
    return this.request("GET", "/v1/models");
  }

  tokenize(inputs, truncate = true) {
    return this.request("POST", "/v1/tokenize", this.withModel({ inputs, truncate }));
  }

  // One text's word pieces, embedding and the attention of the chosen layers and heads.
  // truncate: false, so a text over the model's limit is reported instead of silently cut.
  embedWithAttention(text, layers, heads) {
    return this.embedWithAttentionOptions(text, { layers, heads });
  }

  // returnAttention: the API's return_attention (layers, heads, reduce_heads, rollout, rows).
  embedWithAttentionOptions(text, returnAttention) {
    return this.request(
      "POST",
      "/v1/embed",
      this.withModel({
        inputs: [text],
        normalize: true,
        truncate: false,
        return_tokens: true,
        return_attention: returnAttention,
        encoding: "base64",
      }),
    );
  }

  embed(inputs) {
    return this.request("POST", "/v1/embed", this.withModel({ inputs, normalize: true, truncate: false }));
  }
}
