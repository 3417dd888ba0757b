// Turning the REST answer's arrays into typed arrays the views can index.

// base64 of little-endian float32 (the API's `encoding: "base64"`) -> Float32Array.
export function decodeFloat32Base64(text) {
  const bytes = Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const values = new Float32Array(bytes.length / 4);
  for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(i * 4, true);
  return values;
}

// `data` comes as base64 or, from a server that ignores `encoding`, as nested lists.
export function toFloat32(data) {
  if (typeof data === "string") return decodeFloat32Base64(data);
  return Float32Array.from(data.flat(Infinity));
}

// The attention of one input: [n_layers, n_heads, seq, seq] for the layers and heads it carries.
export class AttentionSet {
  constructor(entry) {
    const [nLayers, nHeads, rows, cols] = entry.shape;
    if (rows !== cols) throw new Error(`attention is not square: ${rows} x ${cols}`);
    this.layers = entry.layers;
    this.heads = entry.heads;
    this.size = rows; // tokens
    this.values = toFloat32(entry.data);
    const expected = nLayers * nHeads * rows * cols;
    if (this.values.length !== expected) {
      throw new Error(`attention has ${this.values.length} values, expected ${expected}`);
    }
    this.nHeadsCarried = nHeads;
  }

  has(layer, head) {
    return this.layers.includes(layer) && this.heads.includes(head);
  }

  // The seq x seq matrix of one layer and head, row = attending token, column = attended token.
  matrix(layer, head) {
    const li = this.layers.indexOf(layer);
    const hi = this.heads.indexOf(head);
    if (li < 0 || hi < 0) throw new Error(`layer ${layer} head ${head} was not fetched`);
    const cells = this.size * this.size;
    const offset = (li * this.nHeadsCarried + hi) * cells;
    return this.values.subarray(offset, offset + cells);
  }
}

export function cosineSimilarity(a, b) {
  let dot = 0;
  let normA = 0;
  let normB = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    normA += a[i] * a[i];
    normB += b[i] * b[i];
  }
  return dot / (Math.sqrt(normA) * Math.sqrt(normB));
}

export function matrixMax(matrix) {
  let max = 0;
  for (const value of matrix) if (value > max) max = value;
  return max;
}
