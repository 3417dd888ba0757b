// The attention explorer: wires the form, the menus and the views to the REST API.

import {
  attentionReceived,
  downloadJson,
  downloadPicture,
  heatmapPicture,
  ImportanceStrip,
  LayerMeans,
  ReducedAttention,
} from "./analytics.js";
import { ApiClient, ApiError } from "./api.js";
import { AttentionSet, matrixMax } from "./attention.js";
import { ColourScale, drawLegend } from "./colour.js";
import { MAX_COMPARED, renderComparison, sentencesOf, similarityMatrix } from "./compare.js";
import { Heatmap } from "./heatmap.js";
import { Overview } from "./overview.js";
import { RerankView } from "./rerank.js";
import { renderWordPieces, TokenView } from "./tokens.js";

const byId = (id) => document.getElementById(id);

const api = new ApiClient();
const heatmap = new Heatmap(byId("heatmap"), byId("heatmap-readout"));
const tokenView = new TokenView(byId("token-view"), byId("token-readout"), (row) => heatmap.highlightRow(row));
const overview = new Overview(byId("overview"), (layer, head) => {
  setView("head");
  selectHead(layer, head);
});
const strip = new ImportanceStrip(byId("importance-strip"), byId("importance-readout"));
const rerankView = new RerankView(api, byId);
const layerMeans = new LayerMeans(byId("layer-means"), (layer) => {
  setView("mean");
  selectHead(layer, shown.head);
});

// What is on screen: the text, its word pieces, the attention fetched for it, the chosen view
// ("head", "mean" or "rollout"), layer and head, and each view's answer as the server sent it.
const shown = {
  text: "",
  tokens: [],
  attention: null, // AttentionSet: per-head
  means: null, // ReducedAttention: the head mean of every layer
  rollout: null, // ReducedAttention: the rollout through every layer
  cls: null, // ReducedAttention: the rollout's [CLS] row
  answers: {},
  view: "head",
  layer: 0,
  head: 0,
};
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
    rerankView.setModels(answer.data);
    // the explorer's own views embed: the first embedding model, whichever model is the default
    const model = answer.data.find((card) => (card.task || "embed") === "embed") || answer.data[0];
    api.model = model.name || model.id;
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

// The matrix the chosen view shows, its title, whose weights the scale ends at, and a file name.
function shownMatrix() {
  const { view, attention, means, rollout, layer, head } = shown;
  if (view === "mean") {
    const title = `Layer ${layer}, mean of ${means.heads.length} heads`;
    return { matrix: means.layerMatrix(layer), title, whose: "this mean's", name: `layer${layer}-head-mean` };
  }
  if (view === "rollout") {
    const layers = rollout.layers;
    const title = `Rollout through layers ${Math.min(...layers)}\u2013${Math.max(...layers)}`;
    return { matrix: rollout.matrix(0), title, whose: "the rollout's", name: "rollout" };
  }
  return { matrix: attention.matrix(layer, head), title: `Layer ${layer}, head ${head}`, whose: "this head's", name: `layer${layer}-head${head}` };
}

function renderView() {
  const { tokens, layer, head, view } = shown;
  const { matrix, title, whose } = shownMatrix();
  const scale = currentScale(matrix);
  byId("heatmap-title").textContent = title;
  byId("view-mode").value = view;
  byId("layer").value = String(layer);
  byId("head").value = String(head);
  byId("layer").disabled = view === "rollout";
  byId("head").disabled = view !== "head";
  heatmap.render(tokens, matrix, scale, title);
  tokenView.render(tokens, matrix, scale);
  drawLegend(byId("legend"), scale, whose);
  overview.markSelected(shown.layer, shown.head);
  if (shown.means) layerMeans.markSelected(view === "mean" ? layer : null);
}

function setView(view) {
  shown.view = view;
  byId("view-mode").value = view;
}

// The token-importance strip, from the rollout's [CLS] row or the mean attention received.
function renderImportance() {
  const select = byId("importance-source");
  select.querySelector("option[value=rollout]").disabled = !shown.cls;
  select.querySelector("option[value=received]").disabled = !shown.means;
  if (select.value === "rollout" && !shown.cls) select.value = "received";
  if (select.value === "received" && !shown.means) select.value = "rollout";
  if (select.value === "rollout" && shown.cls) {
    strip.render(shown.tokens, shown.cls.matrix(0), "what [CLS] draws from through every layer (rollout)");
  } else if (shown.means) {
    strip.render(shown.tokens, attentionReceived(shown.means), "the mean attention it receives");
  } else {
    byId("importance-strip").replaceChildren();
    byId("importance-readout").textContent = "Token importance is not available for this text.";
  }
}

function renderLayerMeans() {
  if (!shown.means) {
    layerMeans.clear("The head means are too large for this server's attention limit for this text.");
    return;
  }
  layerMeans.render(shown.means, byId("scale-mode").value, shown.view === "mean" ? shown.layer : null);
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

// A reduced view the server may find too large (413) under a small limit: null, and the page
// goes on without it.
async function fetchReduced(text, returnAttention) {
  try {
    return await api.embedWithAttentionOptions(text, returnAttention);
  } catch (error) {
    if (error instanceof ApiError && error.status === 413) return null;
    throw error;
  }
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
    const [answer, meansAnswer, rolloutAnswer, clsAnswer] = await Promise.all([
      fetchAttention(text, "all", "all"),
      fetchReduced(text, { reduce_heads: "mean" }),
      fetchReduced(text, { rollout: true }),
      fetchReduced(text, { rollout: true, rows: [0] }),
    ]);
    if (request !== latestRequest) return;
    const attention = new AttentionSet(answer.attention[0]);
    const reduced = (reply) => (reply ? new ReducedAttention(reply.attention[0]) : null);
    Object.assign(shown, {
      means: reduced(meansAnswer),
      rollout: reduced(rolloutAnswer),
      cls: reduced(clsAnswer),
      answers: { head: answer, mean: meansAnswer, rollout: rolloutAnswer },
    });
    byId("view-mode").querySelector("option[value=mean]").disabled = !shown.means;
    byId("view-mode").querySelector("option[value=rollout]").disabled = !shown.rollout;
    if ((shown.view === "mean" && !shown.means) || (shown.view === "rollout" && !shown.rollout)) setView("head");
    if (byId("layer").options.length === 0) {
      fillSelect(byId("layer"), Math.max(...attention.layers) + 1, "Layer");
      fillSelect(byId("head"), Math.max(...attention.heads) + 1, "Head");
    }
    Object.assign(shown, { text, tokens: answer.tokens[0], attention });
    if (!attention.has(shown.layer, shown.head)) Object.assign(shown, { layer: attention.layers[0], head: attention.heads[0] });
    byId("results").hidden = false;
    byId("piece-count").textContent = `${shown.tokens.length} word pieces, special tokens included.`;
    renderWordPieces(byId("word-pieces"), shown.tokens, (i) => tokenView.setFrom(i));
    renderImportance();
    renderView();
    renderLayerMeans();
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
  if (shown.view !== "head" || shown.attention.has(layer, head)) {
    renderView();
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
    shown.answers.head = answer;
    renderView();
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
byId("view-mode").addEventListener("change", () => {
  setView(byId("view-mode").value);
  selectHead(shown.layer, shown.head);
});
byId("scale-mode").addEventListener("change", () => {
  if (!shown.attention) return;
  renderView();
  renderLayerMeans();
  renderOverview();
});
byId("importance-source").addEventListener("change", () => {
  if (shown.attention) renderImportance();
});
byId("download-png").addEventListener("click", () => {
  if (!shown.attention) return;
  const { matrix, title, name } = shownMatrix();
  downloadPicture(heatmapPicture(shown.tokens, matrix, currentScale(matrix), title), `attention-${name}.png`);
});
byId("download-json").addEventListener("click", () => {
  if (!shown.attention) return;
  downloadJson(shown.answers[shown.view], `attention-${shownMatrix().name}.json`);
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
