// The attention explorer: wires the form, the menus and the views to the REST API.

import { ApiClient, ApiError } from "./api.js";
import { AttentionSet, matrixMax } from "./attention.js";
import { ColourScale, drawLegend } from "./colour.js";
import { MAX_COMPARED, renderComparison, sentencesOf, similarityMatrix } from "./compare.js";
import { Heatmap } from "./heatmap.js";
import { Overview } from "./overview.js";
import { renderWordPieces, TokenView } from "./tokens.js";

const byId = (id) => document.getElementById(id);

const api = new ApiClient();
const heatmap = new Heatmap(byId("heatmap"), byId("heatmap-readout"));
const tokenView = new TokenView(byId("token-view"), byId("token-readout"), (row) => heatmap.highlightRow(row));
const overview = new Overview(byId("overview"), (layer, head) => selectHead(layer, head));

// What is on screen: the text, its word pieces, the attention fetched for it, the chosen head.
const shown = { text: "", tokens: [], attention: null, layer: 0, head: 0 };
let latestRequest = 0; // answers to older requests are dropped

function showMessage(region, text) {
  region.textContent = text;
  region.hidden = false;
}

function showError(region, error) {
  if (!(error instanceof ApiError)) throw error; // a bug in this page: let it reach the console
  showMessage(region, error.message);
}

function clearError(region) {
  region.textContent = "";
  region.hidden = true;
}

function setBusy(form, busy, statusText) {
  form.querySelector("button[type=submit]").disabled = busy;
  form.setAttribute("aria-busy", String(busy));
  byId("explore-status").textContent = statusText;
}

function fillSelect(select, count, noun) {
  const chosen = select.value;
  select.replaceChildren(
    ...Array.from({ length: count }, (_, i) => new Option(`${noun} ${i}`, String(i))),
  );
  if (chosen !== "" && Number(chosen) < count) select.value = chosen;
}

// GET /v1/models: what the model is, and how many layers and heads the menus offer.
async function loadModelInfo() {
  const info = byId("model-info");
  try {
    const answer = await api.models();
    if (answer.data.length === 0) {
      throw new ApiError("The server is still loading its model. Reload this page in a moment.");
    }
    const model = answer.data[0];
    fillSelect(byId("layer"), model.layers, "Layer");
    fillSelect(byId("head"), model.heads, "Head");
    byId("sentence").dataset.maxLen = String(model.max_len);
    info.textContent =
      `Model ${model.name || model.id} (version ${model.version}): ${model.layers} layers \u00d7 ${model.heads} heads, ` +
      `${model.dims} dimensions, up to ${model.max_len} word pieces; running on ${model.provider} (${model.precision}).`;
    clearError(byId("model-error"));
  } catch (error) {
    info.textContent = "";
    showError(byId("model-error"), error);
  }
}

function currentScale(matrix) {
  return new ColourScale(byId("scale-mode").value, matrixMax(matrix));
}

function renderSelectedHead() {
  const { tokens, attention, layer, head } = shown;
  const matrix = attention.matrix(layer, head);
  const scale = currentScale(matrix);
  const title = `Layer ${layer}, head ${head}`;
  byId("heatmap-title").textContent = title;
  byId("layer").value = String(layer);
  byId("head").value = String(head);
  heatmap.render(tokens, matrix, scale, title);
  tokenView.render(tokens, matrix, scale);
  drawLegend(byId("legend"), scale);
  overview.markSelected(layer, head);
}

function renderOverview() {
  const { attention } = shown;
  const note = byId("overview-note");
  const everyHead = byId("layer").options.length * byId("head").options.length;
  if (attention.layers.length * attention.heads.length < everyHead) {
    note.textContent =
      "This text is too long for the server to send every head at once (its attention limit), so the " +
      "overview is not shown. Choose a layer and head in the menus above to look at them one at a time.";
    overview.clear("Overview not available for this text.");
    return;
  }
  note.textContent = "Each square is one head's heatmap. Choose one to see it above (arrow keys move between them).";
  overview.render(attention, attention.layers, attention.heads, byId("scale-mode").value, shown);
}

// Ask for every layer and head; a text too long for that (413) falls back to one head.
async function fetchAttention(text, layers, heads) {
  try {
    return await api.embedWithAttention(text, layers, heads);
  } catch (error) {
    if (error instanceof ApiError && error.status === 413 && layers === "all") {
      return api.embedWithAttention(text, [shown.layer], [shown.head]);
    }
    throw error;
  }
}

async function explore(text) {
  const form = byId("explore-form");
  const errorRegion = byId("explore-error");
  clearError(errorRegion);
  if (!text.trim()) {
    showMessage(errorRegion, "Type a sentence first.");
    return;
  }
  const request = ++latestRequest;
  setBusy(form, true, "Asking the server\u2026");
  try {
    const answer = await fetchAttention(text, "all", "all");
    if (request !== latestRequest) return;
    const attention = new AttentionSet(answer.attention[0]);
    if (byId("layer").options.length === 0) {
      fillSelect(byId("layer"), Math.max(...attention.layers) + 1, "Layer");
      fillSelect(byId("head"), Math.max(...attention.heads) + 1, "Head");
    }
    Object.assign(shown, { text, tokens: answer.tokens[0], attention });
    if (!attention.has(shown.layer, shown.head)) Object.assign(shown, { layer: attention.layers[0], head: attention.heads[0] });
    byId("results").hidden = false;
    byId("piece-count").textContent = `${shown.tokens.length} word pieces, special tokens included.`;
    renderWordPieces(byId("word-pieces"), shown.tokens, (i) => tokenView.setFrom(i));
    renderSelectedHead();
    renderOverview();
    setBusy(form, false, `Showing ${shown.tokens.length} word pieces.`);
  } catch (error) {
    const explained = await explainTooLong(text, error);
    if (request !== latestRequest) return;
    setBusy(form, false, "");
    showError(errorRegion, explained);
  }
}

// A 422 for a text over the model's limit reads better in plain words than as the server's
// advice (which speaks of request fields). Cut at the limit, such a text fills it exactly.
async function explainTooLong(text, error) {
  const maxLen = Number(byId("sentence").dataset.maxLen);
  if (!(error instanceof ApiError) || error.status !== 422 || !maxLen) return error;
  try {
    const answer = await api.tokenize([text], true);
    if (answer.tokens[0].length < maxLen) return error;
  } catch {
    return error;
  }
  return new ApiError(
    `This text is too long: the model reads at most ${maxLen} word pieces (special tokens included), ` +
      "and this text has more. Shorten it and try again.",
    { status: 422, type: error.type, serverMessage: error.serverMessage },
  );
}

async function selectHead(layer, head) {
  shown.layer = layer;
  shown.head = head;
  if (!shown.attention) return;
  if (shown.attention.has(layer, head)) {
    renderSelectedHead();
    return;
  }
  const form = byId("explore-form");
  const request = ++latestRequest;
  clearError(byId("explore-error"));
  setBusy(form, true, `Fetching layer ${layer}, head ${head}\u2026`);
  try {
    const answer = await fetchAttention(shown.text, [layer], [head]);
    if (request !== latestRequest) return;
    shown.attention = new AttentionSet(answer.attention[0]);
    renderSelectedHead();
    setBusy(form, false, `Showing layer ${layer}, head ${head}.`);
  } catch (error) {
    if (request !== latestRequest) return;
    setBusy(form, false, "");
    showError(byId("explore-error"), error);
  }
}

async function compare(text) {
  const errorRegion = byId("compare-error");
  const button = byId("compare-form").querySelector("button[type=submit]");
  clearError(errorRegion);
  const sentences = sentencesOf(text);
  if (sentences.length < 2 || sentences.length > MAX_COMPARED) {
    showMessage(errorRegion, `Write between 2 and ${MAX_COMPARED} sentences, one per line.`);
    return;
  }
  button.disabled = true;
  try {
    const answer = await api.embed(sentences);
    renderComparison(byId("compare-result"), sentences, similarityMatrix(answer.embeddings));
  } catch (error) {
    showError(errorRegion, error);
  } finally {
    button.disabled = false;
  }
}

function submitOnCtrlEnter(textarea, form) {
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

byId("explore-form").addEventListener("submit", (event) => {
  event.preventDefault();
  explore(byId("sentence").value);
});
byId("compare-form").addEventListener("submit", (event) => {
  event.preventDefault();
  compare(byId("compare-input").value);
});
submitOnCtrlEnter(byId("sentence"), byId("explore-form"));
submitOnCtrlEnter(byId("compare-input"), byId("compare-form"));
byId("layer").addEventListener("change", () => selectHead(Number(byId("layer").value), shown.head));
byId("head").addEventListener("change", () => selectHead(shown.layer, Number(byId("head").value)));
byId("scale-mode").addEventListener("change", () => {
  if (!shown.attention) return;
  renderSelectedHead();
  renderOverview();
});
function useApiKey() {
  const key = byId("api-key").value.trim();
  if (key === api.apiKey) return;
  api.apiKey = key;
  loadModelInfo();
}
byId("api-key").addEventListener("change", useApiKey);
byId("api-key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  useApiKey();
});

loadModelInfo();
