// Word pieces, and the token-to-token view: pick an attending token on the left, see the
// tokens it attends to on the right (shaded by weight, joined by lines as strong as the weight).

import { escapeXml } from "./heatmap.js";
import { textColourOn } from "./colour.js";

const ROW_HEIGHT = 20;
const FROM_X = 150; // right edge of the attending tokens
const TO_X = 330; // left edge of the attended tokens
const BOX_WIDTH = 140;

export function renderWordPieces(list, tokens, onPoint) {
  list.replaceChildren(
    ...tokens.map((token, i) => {
      const item = document.createElement("li");
      item.className = "piece";
      item.textContent = token.text;
      item.title = token.end > token.start ? `#${i}, characters ${token.start}\u2013${token.end}` : `#${i}, special token`;
      item.addEventListener("mouseenter", () => onPoint(i));
      return item;
    }),
  );
}

export class TokenView {
  // onFrom(index | null) runs when the attending token changes.
  constructor(svg, readout, onFrom) {
    this.svg = svg;
    this.readout = readout;
    this.onFrom = onFrom;
    this.from = null;
    svg.addEventListener("mouseover", (event) => {
      const group = event.target.closest && event.target.closest(".t2t-from");
      if (group) this.setFrom(Number(group.dataset.index));
    });
    svg.addEventListener("keydown", (event) => this.moveFrom(event));
  }

  render(tokens, matrix, scale) {
    this.tokens = tokens;
    this.matrix = matrix;
    this.scale = scale;
    const height = tokens.length * ROW_HEIGHT + 8;
    const width = TO_X + BOX_WIDTH + 10;
    this.svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.svg.setAttribute("width", width);
    this.svg.setAttribute("height", height);
    const parts = ['<g class="t2t-lines"></g>'];
    tokens.forEach((token, i) => {
      const y = 4 + i * ROW_HEIGHT;
      const text = escapeXml(token.text);
      parts.push(
        `<g class="t2t-from" data-index="${i}"><rect x="${FROM_X - BOX_WIDTH}" y="${y}" width="${BOX_WIDTH}" ` +
          `height="${ROW_HEIGHT - 2}" rx="3"/><text x="${FROM_X - 6}" y="${y + ROW_HEIGHT / 2}" ` +
          `text-anchor="end" dominant-baseline="central">${text}</text></g>`,
        `<g class="t2t-to" data-index="${i}"><rect x="${TO_X}" y="${y}" width="${BOX_WIDTH}" ` +
          `height="${ROW_HEIGHT - 2}" rx="3"/><text x="${TO_X + 6}" y="${y + ROW_HEIGHT / 2}" ` +
          `dominant-baseline="central">${text}</text></g>`,
      );
    });
    this.svg.innerHTML = parts.join("");
    this.lines = this.svg.querySelector(".t2t-lines");
    this.setFrom(this.from !== null && this.from < tokens.length ? this.from : null);
  }

  setFrom(index) {
    this.from = index;
    this.lines.replaceChildren();
    for (const group of this.svg.querySelectorAll(".t2t-from")) {
      group.classList.toggle("is-from", Number(group.dataset.index) === index);
    }
    const targets = this.svg.querySelectorAll(".t2t-to");
    if (index === null) {
      for (const group of targets) {
        group.querySelector("rect").removeAttribute("style");
        group.querySelector("text").removeAttribute("style");
      }
      this.readout.textContent = "Point at a word piece on the left, or focus this view and use \u2191 \u2193.";
      this.onFrom(null);
      return;
    }
    const n = this.tokens.length;
    const row = this.matrix.subarray(index * n, (index + 1) * n);
    const rowMax = Math.max(...row) || 1;
    const yFrom = 4 + index * ROW_HEIGHT + ROW_HEIGHT / 2;
    const lineParts = [];
    row.forEach((weight, j) => {
      const position = this.scale.position(weight);
      targets[j].querySelector("rect").style.fill = this.scale.css(weight);
      targets[j].querySelector("text").style.fill = textColourOn(position);
      const yTo = 4 + j * ROW_HEIGHT + ROW_HEIGHT / 2;
      lineParts.push(
        `<line x1="${FROM_X}" y1="${yFrom}" x2="${TO_X}" y2="${yTo}" stroke-opacity="${(weight / rowMax).toFixed(3)}"/>`,
      );
    });
    this.lines.innerHTML = lineParts.join("");
    const strongest = Array.from(row.keys())
      .sort((a, b) => row[b] - row[a])
      .slice(0, 3)
      .map((j) => `\u201c${this.tokens[j].text}\u201d (#${j}) ${row[j].toFixed(2)}`);
    this.readout.textContent = `\u201c${this.tokens[index].text}\u201d (#${index}) attends most to ${strongest.join(", ")}.`;
    this.onFrom(index);
  }

  moveFrom(event) {
    if (!this.tokens) return;
    const last = this.tokens.length - 1;
    const current = this.from === null ? -1 : this.from;
    const next = { ArrowUp: current - 1, ArrowDown: current + 1, Home: 0, End: last }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    const index = Math.min(last, Math.max(0, next));
    this.setFrom(index);
    this.svg.querySelectorAll(".t2t-from")[index].scrollIntoView({ block: "nearest" });
  }
}
