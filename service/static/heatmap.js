// The heatmap of one layer and head: an SVG rect per (attending token, attended token) pair.

const PLOT_SIZE = 520; // px the cells aim to fill
const LABEL_SPACE = 110; // px for token labels left of and above the cells

export function escapeXml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

export class Heatmap {
  constructor(svg, readout) {
    this.svg = svg;
    this.readout = readout;
    this.tokens = [];
    this.matrix = null;
    this.cursor = null; // [row, col] the keyboard or mouse points at
    svg.addEventListener("mousemove", (event) => this.pointAt(event));
    svg.addEventListener("keydown", (event) => this.moveCursor(event));
  }

  render(tokens, matrix, scale, title) {
    this.tokens = tokens;
    this.matrix = matrix;
    const n = tokens.length;
    this.cell = Math.max(2, Math.min(28, Math.floor(PLOT_SIZE / n)));
    this.showLabels = this.cell >= 9;
    this.origin = this.showLabels ? LABEL_SPACE : 4;
    const side = this.origin + n * this.cell + 4;
    this.svg.setAttribute("viewBox", `0 0 ${side} ${side}`);
    this.svg.setAttribute("width", side);
    this.svg.setAttribute("height", side);
    this.svg.setAttribute("data-cell-count", String(n * n));
    this.svg.setAttribute(
      "aria-label",
      `${title}: attention between ${n} word pieces, one cell per pair. Rows attend to columns. ` +
        "Use the arrow keys to read single cells.",
    );

    const parts = [];
    for (let row = 0; row < n; row++) {
      const y = this.origin + row * this.cell;
      for (let col = 0; col < n; col++) {
        const x = this.origin + col * this.cell;
        const fill = scale.css(matrix[row * n + col]);
        parts.push(`<rect class="attn-cell" x="${x}" y="${y}" width="${this.cell}" height="${this.cell}" fill="${fill}"/>`);
      }
    }
    if (this.showLabels) parts.push(this.labels());
    parts.push(`<rect class="heatmap-row" x="${this.origin}" width="${n * this.cell}" height="${this.cell}" visibility="hidden"/>`);
    parts.push(`<rect class="heatmap-cursor" width="${this.cell}" height="${this.cell}" visibility="hidden"/>`);
    this.svg.innerHTML = parts.join("");
    this.rowMarker = this.svg.querySelector(".heatmap-row");
    this.cursorMarker = this.svg.querySelector(".heatmap-cursor");
    this.cursor = null;
    this.readout.textContent = "Point at a cell, or focus the heatmap and use the arrow keys, to read its weight.";
  }

  labels() {
    const fontSize = Math.min(12, this.cell - 1);
    const parts = [];
    this.tokens.forEach((token, i) => {
      const middle = this.origin + i * this.cell + this.cell / 2;
      const text = escapeXml(token.text);
      parts.push(
        `<text class="heatmap-label" x="${this.origin - 4}" y="${middle}" font-size="${fontSize}" ` +
          `text-anchor="end" dominant-baseline="central">${text}</text>`,
      );
      parts.push(
        `<text class="heatmap-label" transform="translate(${middle} ${this.origin - 4}) rotate(-60)" ` +
          `font-size="${fontSize}" dominant-baseline="central">${text}</text>`,
      );
    });
    return parts.join("");
  }

  // Outline the row of one attending token (from the token view), or none with null.
  highlightRow(row) {
    if (!this.rowMarker) return;
    if (row === null) {
      this.rowMarker.setAttribute("visibility", "hidden");
      return;
    }
    this.rowMarker.setAttribute("y", this.origin + row * this.cell);
    this.rowMarker.setAttribute("visibility", "visible");
  }

  pointAt(event) {
    const target = event.target;
    if (!(target instanceof SVGRectElement) || !target.classList.contains("attn-cell")) return;
    const col = Math.round((Number(target.getAttribute("x")) - this.origin) / this.cell);
    const row = Math.round((Number(target.getAttribute("y")) - this.origin) / this.cell);
    this.setCursor(row, col);
  }

  moveCursor(event) {
    if (!this.matrix) return;
    const n = this.tokens.length;
    const [row, col] = this.cursor || [0, 0];
    const moves = {
      ArrowUp: [row - 1, col],
      ArrowDown: [row + 1, col],
      ArrowLeft: [row, col - 1],
      ArrowRight: [row, col + 1],
      Home: [row, 0],
      End: [row, n - 1],
    };
    const next = this.cursor ? moves[event.key] : moves[event.key] && [0, 0];
    if (!next) return;
    event.preventDefault();
    this.setCursor(Math.min(n - 1, Math.max(0, next[0])), Math.min(n - 1, Math.max(0, next[1])));
  }

  setCursor(row, col) {
    this.cursor = [row, col];
    this.cursorMarker.setAttribute("x", this.origin + col * this.cell);
    this.cursorMarker.setAttribute("y", this.origin + row * this.cell);
    this.cursorMarker.setAttribute("visibility", "visible");
    const weight = this.matrix[row * this.tokens.length + col];
    this.readout.textContent =
      `\u201c${this.tokens[row].text}\u201d (#${row}) attends to \u201c${this.tokens[col].text}\u201d (#${col}) ` +
      `with weight ${weight.toFixed(3)}.`;
  }
}
