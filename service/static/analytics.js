// What the server reduces for the page: head means per layer, the rollout, token importance;
// and downloads of what is shown (PNG and the JSON answer it came from).

import { matrixMax, toFloat32 } from "./attention.js";
import { ColourScale, textColourOn, viridis } from "./colour.js";

// A reduced answer: [layers', 1, rows', tokens] (head means per layer, a rollout, chosen rows).
export class ReducedAttention {
  constructor(entry) {
    const [nLayers, nHeads, rows, cols] = entry.shape;
    if (nHeads !== 1) throw new Error(`a reduced answer has one head, this one ${nHeads}`);
    this.layers = entry.layers; // what it was computed from
    this.heads = entry.heads;
    this.rollout = entry.rollout;
    this.nLayers = nLayers;
    this.rows = rows;
    this.size = cols; // tokens
    this.values = toFloat32(entry.data);
    if (this.values.length !== nLayers * rows * cols) {
      throw new Error(`attention has ${this.values.length} values, expected ${nLayers * rows * cols}`);
    }
  }

  // rows x tokens of the layers axis' entry `index` (a rollout has only index 0).
  matrix(index = 0) {
    const cells = this.rows * this.size;
    return this.values.subarray(index * cells, (index + 1) * cells);
  }

  // The head mean of model layer `layer`.
  layerMatrix(layer) {
    const index = this.layers.indexOf(layer);
    if (index < 0) throw new Error(`layer ${layer} was not fetched`);
    return this.matrix(index);
  }
}

// The mean attention each token receives: over every layer's head mean and every query row.
export function attentionReceived(means) {
  const n = means.size;
  const received = new Float32Array(n);
  for (let l = 0; l < means.nLayers; l++) {
    const matrix = means.matrix(l);
    for (let i = 0; i < means.rows; i++) for (let j = 0; j < n; j++) received[j] += matrix[i * n + j];
  }
  return received.map((value) => value / (means.nLayers * means.rows));
}

// One canvas pixel per cell, viridis on the given scale (the small multiples' drawing).
export function matrixCanvas(matrix, rows, cols, scale) {
  const canvas = document.createElement("canvas");
  canvas.width = cols;
  canvas.height = rows;
  const context = canvas.getContext("2d");
  const image = context.createImageData(cols, rows);
  for (let i = 0; i < matrix.length; i++) {
    const [r, g, b] = viridis(scale.position(matrix[i]));
    image.data.set([r, g, b, 255], i * 4);
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

// The token-importance strip: the text's word pieces, each shaded by its importance.
export class ImportanceStrip {
  constructor(list, readout) {
    this.list = list;
    this.readout = readout;
    this.cursor = null;
    list.addEventListener("keydown", (event) => this.move(event));
    list.addEventListener("mouseover", (event) => {
      const item = event.target.closest && event.target.closest(".importance-piece");
      if (item) this.point(Number(item.dataset.index));
    });
  }

  render(tokens, values, what) {
    this.tokens = tokens;
    this.values = values;
    this.what = what;
    // Shaded up to the largest value of a word (special tokens, often far above, are clamped),
    // so the text's own pieces stay apart.
    const words = tokens.map((token, i) => (token.end > token.start ? values[i] : 0));
    const scale = new ColourScale("relative", matrixMax(words) || matrixMax(values));
    this.ranks = Array.from(values.keys()).sort((a, b) => values[b] - values[a]);
    this.list.replaceChildren(
      ...tokens.map((token, i) => {
        const item = document.createElement("li");
        item.className = "importance-piece";
        item.dataset.index = String(i);
        item.dataset.value = values[i].toFixed(6);
        item.textContent = token.text;
        item.style.background = scale.css(values[i]);
        item.style.color = textColourOn(scale.position(values[i]));
        return item;
      }),
    );
    this.list.setAttribute(
      "aria-label",
      `Token importance, ${what}. Use the left and right arrow keys to read each word piece's value.`,
    );
    this.cursor = null;
    this.readout.textContent = "Point at a word piece, or focus the strip and use the arrow keys, to read its value.";
  }

  move(event) {
    if (!this.tokens) return;
    const steps = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -1, ArrowDown: 1 };
    let next = null;
    if (event.key in steps) next = this.cursor === null ? 0 : this.cursor + steps[event.key];
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = this.tokens.length - 1;
    if (next === null) return;
    event.preventDefault();
    this.point(Math.min(this.tokens.length - 1, Math.max(0, next)));
  }

  point(index) {
    this.cursor = index;
    for (const item of this.list.children) item.classList.toggle("is-current", Number(item.dataset.index) === index);
    const rank = this.ranks.indexOf(index) + 1;
    this.readout.textContent =
      `\u201c${this.tokens[index].text}\u201d (#${index}): ${this.values[index].toFixed(3)}, ` +
      `${ordinal(rank)} of ${this.tokens.length} by ${this.what}.`;
  }
}

function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] || "th";
  return `${n}${suffix}`;
}

// The head mean of every layer as small heatmaps; each a button that shows it above.
export class LayerMeans {
  constructor(container, onSelect) {
    this.container = container;
    this.onSelect = onSelect;
    this.buttons = [];
    container.addEventListener("keydown", (event) => this.moveFocus(event));
  }

  render(means, scaleMode, selectedLayer) {
    this.buttons = means.layers.map((layer, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "multiple";
      button.dataset.layer = String(layer);
      button.setAttribute("aria-label", `Layer ${layer}, mean of all heads`);
      button.addEventListener("click", () => this.onSelect(layer));
      const matrix = means.matrix(index);
      button.append(matrixCanvas(matrix, means.rows, means.size, new ColourScale(scaleMode, matrixMax(matrix))));
      const caption = document.createElement("span");
      caption.textContent = `Layer ${layer}`;
      const figure = document.createElement("div");
      figure.className = "layer-mean";
      figure.append(button, caption);
      return figure;
    });
    this.container.replaceChildren(...this.buttons);
    this.buttons = this.buttons.map((figure) => figure.querySelector("button"));
    this.markSelected(selectedLayer);
  }

  markSelected(layer) {
    for (const button of this.buttons) {
      const isSelected = layer !== null && button.dataset.layer === String(layer);
      button.setAttribute("aria-pressed", String(isSelected));
      button.tabIndex = -1;
    }
    const current = this.buttons.find((b) => b.getAttribute("aria-pressed") === "true") || this.buttons[0];
    if (current) current.tabIndex = 0;
  }

  moveFocus(event) {
    const steps = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -1, ArrowDown: 1 };
    const index = this.buttons.indexOf(event.target);
    if (!(event.key in steps) || index < 0) return;
    event.preventDefault();
    const next = this.buttons[Math.min(this.buttons.length - 1, Math.max(0, index + steps[event.key]))];
    for (const button of this.buttons) button.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  }

  clear(message) {
    this.buttons = [];
    const note = document.createElement("p");
    note.className = "hint";
    note.textContent = message;
    this.container.replaceChildren(note);
  }
}

// The shown heatmap as a picture: title, labelled cells and the colour scale, on white.
export function heatmapPicture(tokens, matrix, scale, title) {
  const n = tokens.length;
  const cell = Math.max(3, Math.min(24, Math.floor(720 / n)));
  const labels = cell >= 9;
  const margin = labels ? 120 : 10;
  const side = margin + n * cell + 10;
  const canvas = document.createElement("canvas");
  canvas.width = side;
  canvas.height = side + 70;
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.fillStyle = "#1b1f24";
  context.font = "bold 14px sans-serif";
  context.fillText(`${title}: rows attend to columns`, 10, 18);
  const top = margin + 10;
  for (let row = 0; row < n; row++) {
    for (let col = 0; col < n; col++) {
      context.fillStyle = scale.css(matrix[row * n + col]);
      context.fillRect(margin + col * cell, top + row * cell, cell, cell);
    }
  }
  if (labels) {
    context.fillStyle = "#1b1f24";
    context.font = `${Math.min(12, cell - 1)}px monospace`;
    tokens.forEach((token, i) => {
      const middle = i * cell + cell / 2;
      context.textAlign = "right";
      context.textBaseline = "middle";
      context.fillText(token.text, margin - 4, top + middle);
      context.save();
      context.translate(margin + middle, top - 4);
      context.rotate(-Math.PI / 3);
      context.textAlign = "left";
      context.fillText(token.text, 0, 0);
      context.restore();
    });
  }
  const legendTop = top + n * cell + 16;
  for (let x = 0; x < 240; x++) {
    const [r, g, b] = viridis(x / 239);
    context.fillStyle = `rgb(${r},${g},${b})`;
    context.fillRect(10 + x, legendTop, 1, 12);
  }
  context.fillStyle = "#1b1f24";
  context.font = "12px sans-serif";
  context.textAlign = "left";
  context.textBaseline = "top";
  context.fillText(`0 to ${scale.max.toFixed(3)}`, 260, legendTop);
  return canvas;
}

function save(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function downloadPicture(canvas, filename) {
  canvas.toBlob((blob) => save(blob, filename), "image/png");
}

export function downloadJson(answer, filename) {
  save(new Blob([JSON.stringify(answer, null, 2)], { type: "application/json" }), filename);
}
