// The rerank view: a query and documents ranked by a reranker (POST /rerank), and for the chosen
// document its query x document attention (a head, a layer's head mean, or the rollout) and what
// [CLS], whose state the score is read from, drew on among the query's and the document's tokens.

import { ImportanceStrip } from "./analytics.js";
import { ApiError } from "./api.js";
import { matrixMax, toFloat32 } from "./attention.js";
import { ColourScale, drawLegend } from "./colour.js";
import { escapeXml } from "./heatmap.js";

const MAX_DOCUMENTS = 16;
const CELL_MAX = 28;
const PLOT_WIDTH = 560;
const LABEL_SPACE = 110;

// The query x document block as a grid of cells: rows the query's tokens, columns the document's.
export class BlockHeatmap {
  constructor(svg, readout) {
    this.svg = svg;
    this.readout = readout;
    svg.addEventListener("mousemove", (event) => this.pointAt(event));
  }

  render(rows, columns, matrix, scale, title) {
    Object.assign(this, { rows, columns, matrix });
    this.cell = Math.max(6, Math.min(CELL_MAX, Math.floor(PLOT_WIDTH / Math.max(columns.length, 1))));
    const width = LABEL_SPACE + columns.length * this.cell + 4;
    const height = LABEL_SPACE + rows.length * this.cell + 4;
    this.svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.svg.setAttribute("width", width);
    this.svg.setAttribute("height", height);
    this.svg.setAttribute("data-cell-count", String(rows.length * columns.length));
    this.svg.setAttribute(
      "aria-label",
      `${title}: ${rows.length} query word pieces (rows) attending to ${columns.length} document word pieces (columns).`,
    );
    const parts = [];
    const font = Math.min(12, this.cell - 1);
    rows.forEach((token, r) => {
      const y = LABEL_SPACE + r * this.cell;
      parts.push(
        `<text class="heatmap-label" x="${LABEL_SPACE - 4}" y="${y + this.cell * 0.7}" text-anchor="end" font-size="${font}">${escapeXml(token.text)}</text>`,
      );
      columns.forEach((_, c) => {
        const value = matrix[r * columns.length + c];
        const x = LABEL_SPACE + c * this.cell;
        parts.push(
          `<rect class="attn-cell" x="${x}" y="${y}" width="${this.cell}" height="${this.cell}" fill="${scale.css(value)}"/>`,
        );
      });
    });
    columns.forEach((token, c) => {
      const x = LABEL_SPACE + c * this.cell + this.cell * 0.7;
      parts.push(
        `<text class="heatmap-label" transform="translate(${x},${LABEL_SPACE - 4}) rotate(-60)" font-size="${font}">${escapeXml(token.text)}</text>`,
      );
    });
    this.svg.innerHTML = parts.join("");
    this.readout.textContent = "Point at a cell to read how much that query word piece attends to that document word piece.";
  }

  pointAt(event) {
    if (!this.matrix) return;
    const box = this.svg.getBoundingClientRect();
    const scale = this.svg.viewBox.baseVal.width / box.width;
    const col = Math.floor(((event.clientX - box.left) * scale - LABEL_SPACE) / this.cell);
    const row = Math.floor(((event.clientY - box.top) * scale - LABEL_SPACE) / this.cell);
    if (row < 0 || col < 0 || row >= this.rows.length || col >= this.columns.length) return;
    const value = this.matrix[row * this.columns.length + col];
    this.readout.textContent =
      `Query \u201c${this.rows[row].text}\u201d attends to document \u201c${this.columns[col].text}\u201d with weight ${value.toFixed(4)}.`;
  }
}

export class RerankView {
  constructor(api, byId) {
    this.api = api;
    this.byId = byId;
    this.heatmap = new BlockHeatmap(byId("rerank-heatmap"), byId("rerank-readout"));
    this.queryStrip = new ImportanceStrip(byId("rerank-query-tokens"), byId("rerank-query-readout"));
    this.documentStrip = new ImportanceStrip(byId("rerank-document-tokens"), byId("rerank-document-readout"));
    this.chosen = null; // the document index shown in detail
    this.latest = 0;
    byId("rerank-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.rank();
    });
    for (const id of ["rerank-view", "rerank-layer", "rerank-head"]) {
      byId(id).addEventListener("change", () => this.chosen !== null && this.showDetail(this.chosen));
    }
  }

  // From GET /v1/models: the rerank models, and the layer and head menus of the first.
  setModels(cards) {
    const rerankers = cards.filter((card) => card.task === "rerank");
    this.byId("rerank-none").hidden = rerankers.length > 0;
    this.byId("rerank-form").hidden = rerankers.length === 0;
    const select = this.byId("rerank-model");
    select.replaceChildren(...rerankers.map((card) => new Option(card.name, card.name)));
    this.cards = Object.fromEntries(rerankers.map((card) => [card.name, card]));
    select.onchange = () => this.fillMenus();
    this.fillMenus();
  }

  fillMenus() {
    const card = this.cards[this.byId("rerank-model").value];
    if (!card) return;
    const fill = (id, count, noun) =>
      this.byId(id).replaceChildren(...Array.from({ length: count }, (_, i) => new Option(`${noun} ${i}`, String(i))));
    fill("rerank-layer", card.layers, "Layer");
    fill("rerank-head", card.heads, "Head");
    this.byId("rerank-layer").value = String(card.layers - 1);
  }

  documents() {
    return this.byId("rerank-documents").value.split("\n").map((line) => line.trim()).filter(Boolean);
  }

  showError(error) {
    if (!(error instanceof ApiError)) throw error;
    const region = this.byId("rerank-error");
    region.textContent = error.message;
    region.hidden = false;
  }

  async rank() {
    const query = this.byId("rerank-query").value.trim();
    const documents = this.documents();
    this.byId("rerank-error").hidden = true;
    if (!query || documents.length === 0 || documents.length > MAX_DOCUMENTS) {
      this.showError(new ApiError(`Enter a query and 1 to ${MAX_DOCUMENTS} documents, one per line.`));
      return;
    }
    const request = ++this.latest;
    try {
      const answer = await this.api.request("POST", "/rerank", {
        model: this.byId("rerank-model").value,
        query,
        texts: documents,
        truncate: true,
      });
      if (request !== this.latest) return;
      this.ranked = { query, documents, answer };
      this.renderRanking();
      this.showDetail(answer[0].index);
    } catch (error) {
      this.showError(error);
    }
  }

  renderRanking() {
    const { documents, answer } = this.ranked;
    const list = this.byId("rerank-results");
    list.replaceChildren(
      ...answer.map((item, rank) => {
        const entry = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "ranked";
        button.dataset.index = String(item.index);
        button.setAttribute("aria-pressed", "false");
        button.innerHTML =
          `<span class="rank">${rank + 1}</span> <span class="score">${item.score.toFixed(3)}</span> ` +
          `<span class="document">${escapeXml(documents[item.index])}</span>`;
        button.addEventListener("click", () => this.showDetail(item.index));
        entry.append(button);
        return entry;
      }),
    );
  }

  // The chosen document's pair: its query x document block in the chosen view, and [CLS]'s rollout row.
  async showDetail(index) {
    this.chosen = index;
    for (const button of this.byId("rerank-results").querySelectorAll("button.ranked")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.index) === index));
    }
    const view = this.byId("rerank-view").value;
    const layer = Number(this.byId("rerank-layer").value);
    const head = Number(this.byId("rerank-head").value);
    this.byId("rerank-layer").disabled = view === "rollout";
    this.byId("rerank-head").disabled = view !== "head";
    const selection =
      view === "rollout"
        ? { rollout: true }
        : view === "mean"
          ? { layers: [layer], reduce_heads: "mean" }
          : { layers: [layer], heads: [head] };
    const { query, documents } = this.ranked;
    const pair = (returnAttention) =>
      this.api.request("POST", "/rerank", {
        model: this.byId("rerank-model").value,
        query,
        texts: [documents[index]],
        return_tokens: true,
        return_attention: returnAttention,
        encoding: "base64",
      });
    const request = ++this.latest;
    try {
      const [block, cls] = await Promise.all([
        pair({ ...selection, block: "query_to_document" }),
        pair({ rollout: true, rows: [0] }),
      ]);
      if (request !== this.latest) return;
      this.renderDetail(index, view, layer, head, block[0], cls[0]);
    } catch (error) {
      this.showError(error);
    }
  }

  renderDetail(index, view, layer, head, block, cls) {
    const tokens = block.tokens;
    const [q0, q1] = block.query_span;
    const [d0, d1] = block.document_span;
    const matrix = toFloat32(block.attention.data);
    const title =
      view === "rollout" ? "Rollout through every layer" : view === "mean" ? `Layer ${layer}, head mean` : `Layer ${layer}, head ${head}`;
    const scale = new ColourScale("relative", matrixMax(matrix));
    this.byId("rerank-detail").hidden = false;
    this.byId("rerank-heatmap-title").textContent =
      `${title}: document ${index + 1} (score ${block.score.toFixed(3)}), query rows attend to document columns`;
    this.heatmap.render(tokens.slice(q0, q1), tokens.slice(d0, d1), matrix, scale, title);
    drawLegend(this.byId("rerank-legend"), scale, "this block's");
    const drawn = toFloat32(cls.attention.data); // [CLS]'s rollout row over the whole pair
    this.queryStrip.render(tokens.slice(q0, q1), Array.from(drawn.slice(q0, q1)), "what [CLS] drew on in the query");
    this.documentStrip.render(tokens.slice(d0, d1), Array.from(drawn.slice(d0, d1)), "what [CLS] drew on in the document");
  }
}
