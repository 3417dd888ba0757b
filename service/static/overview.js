// The overview: every layer x head as a small heatmap (one canvas pixel per cell), each a button.

import { ColourScale, viridis } from "./colour.js";
import { matrixMax } from "./attention.js";

export class Overview {
  // onSelect(layer, head) runs when a small multiple is chosen.
  constructor(table, onSelect) {
    this.table = table;
    this.onSelect = onSelect;
    this.buttons = []; // [layerIndex][headIndex]
    table.addEventListener("keydown", (event) => this.moveFocus(event));
  }

  render(attention, layers, heads, scaleMode, selected) {
    const head = document.createElement("thead");
    const headerRow = head.insertRow();
    const corner = document.createElement("th");
    corner.textContent = "Layer \\ head";
    corner.scope = "col";
    headerRow.append(corner);
    for (const h of heads) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = String(h);
      headerRow.append(th);
    }
    const body = document.createElement("tbody");
    this.buttons = layers.map((layer) => {
      const row = body.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = String(layer);
      row.append(th);
      return heads.map((h) => {
        const button = this.smallMultiple(attention, layer, h, scaleMode);
        row.insertCell().append(button);
        return button;
      });
    });
    this.table.replaceChildren(head, body);
    this.markSelected(selected.layer, selected.head);
  }

  smallMultiple(attention, layer, head, scaleMode) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "multiple";
    button.dataset.layer = String(layer);
    button.dataset.head = String(head);
    button.setAttribute("aria-label", `Layer ${layer}, head ${head}`);
    button.addEventListener("click", () => this.onSelect(layer, head));
    const canvas = document.createElement("canvas");
    const n = attention.size;
    canvas.width = n;
    canvas.height = n;
    const matrix = attention.matrix(layer, head);
    const scale = new ColourScale(scaleMode, matrixMax(matrix));
    const image = canvas.getContext("2d").createImageData(n, n);
    for (let i = 0; i < matrix.length; i++) {
      const [r, g, b] = viridis(scale.position(matrix[i]));
      image.data.set([r, g, b, 255], i * 4);
    }
    canvas.getContext("2d").putImageData(image, 0, 0);
    button.append(canvas);
    return button;
  }

  // One button in the tab order (the selected one); the arrow keys move between them.
  markSelected(layer, head) {
    for (const button of this.buttons.flat()) {
      const isSelected = button.dataset.layer === String(layer) && button.dataset.head === String(head);
      button.setAttribute("aria-pressed", String(isSelected));
      button.tabIndex = isSelected ? 0 : -1;
    }
  }

  moveFocus(event) {
    const steps = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    const step = steps[event.key];
    if (!step || !(event.target instanceof HTMLButtonElement)) return;
    let position = null;
    this.buttons.forEach((row, r) => {
      const c = row.indexOf(event.target);
      if (c >= 0) position = [r, c];
    });
    if (!position) return;
    event.preventDefault();
    const r = Math.min(this.buttons.length - 1, Math.max(0, position[0] + step[0]));
    const c = Math.min(this.buttons[r].length - 1, Math.max(0, position[1] + step[1]));
    for (const button of this.buttons.flat()) button.tabIndex = -1;
    this.buttons[r][c].tabIndex = 0;
    this.buttons[r][c].focus();
  }

  clear(message) {
    this.buttons = [];
    const caption = document.createElement("caption");
    caption.textContent = message;
    this.table.replaceChildren(caption);
  }
}
