// Comparing sentences: the cosine similarity of every pair of their embeddings, as a table.

import { cosineSimilarity, toFloat32 } from "./attention.js";
import { textColourOn, viridisCss } from "./colour.js";

export const MAX_COMPARED = 12;

// The lines of the text box that hold something; the caller checks there are 2 to MAX_COMPARED.
export function sentencesOf(text) {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.length > 0);
}

export function similarityMatrix(embeddings) {
  const vectors = embeddings.map((embedding) => (typeof embedding === "string" ? toFloat32(embedding) : embedding));
  return vectors.map((a) => vectors.map((b) => cosineSimilarity(a, b)));
}

export function renderComparison(container, sentences, similarities) {
  const key = document.createElement("ol");
  key.className = "compare-key";
  for (const sentence of sentences) {
    const item = document.createElement("li");
    item.textContent = sentence;
    key.append(item);
  }

  const explanation = document.createElement("p");
  explanation.className = "hint";
  explanation.textContent =
    "Cosine similarity of the sentence embeddings: 1 means the same direction, 0 unrelated. " +
    "Colour runs from 0 (dark) to 1 (bright yellow); values below 0 share the darkest colour.";
  const table = document.createElement("table");
  table.className = "similarity";
  table.createCaption().textContent = "Cosine similarity";
  const headerRow = table.createTHead().insertRow();
  headerRow.append(document.createElement("td"));
  sentences.forEach((_, i) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = `S${i + 1}`;
    headerRow.append(th);
  });
  const body = table.createTBody();
  similarities.forEach((row, i) => {
    const tableRow = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = `S${i + 1}`;
    th.title = sentences[i];
    tableRow.append(th);
    row.forEach((similarity, j) => {
      const cell = tableRow.insertCell();
      cell.className = "similarity-cell";
      cell.textContent = similarity.toFixed(2);
      const position = Math.max(0, similarity);
      cell.style.background = viridisCss(position);
      cell.style.color = textColourOn(position);
      cell.title = `S${i + 1} vs S${j + 1}: ${similarity.toFixed(4)}`;
    });
  });

  const summary = document.createElement("p");
  summary.className = "compare-summary";
  summary.textContent = closestPairText(similarities);
  container.replaceChildren(key, explanation, table, summary);
}

function closestPairText(similarities) {
  let best = null;
  similarities.forEach((row, i) =>
    row.forEach((similarity, j) => {
      if (j > i && (best === null || similarity > best.similarity)) best = { i, j, similarity };
    }),
  );
  return `Most similar pair: S${best.i + 1} and S${best.j + 1} (${best.similarity.toFixed(2)}).`;
}
