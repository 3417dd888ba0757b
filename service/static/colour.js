// The colour scale: viridis (perceptually even, readable with common colour blindness).

const VIRIDIS = [
  [68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142], [33, 145, 140],
  [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38], [253, 231, 37],
];

// t in [0, 1] -> [r, g, b]; values outside are clamped.
export function viridis(t) {
  const clamped = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0));
  const position = clamped * (VIRIDIS.length - 1);
  const low = Math.floor(position);
  const high = Math.min(low + 1, VIRIDIS.length - 1);
  const mix = position - low;
  return VIRIDIS[low].map((channel, i) => Math.round(channel + (VIRIDIS[high][i] - channel) * mix));
}

export function viridisCss(t) {
  const [r, g, b] = viridis(t);
  return `rgb(${r},${g},${b})`;
}

// Black text on the light end of the scale, white on the dark end.
export function textColourOn(t) {
  return t > 0.55 ? "#000" : "#fff";
}

// A scale maps an attention weight to [0, 1]: either 0..1 as is, or 0..(largest shown value).
export class ColourScale {
  constructor(mode, max) {
    this.mode = mode; // "fixed" | "relative"
    this.max = mode === "fixed" || !(max > 0) ? 1 : max;
  }

  position(value) {
    return value / this.max;
  }

  css(value) {
    return viridisCss(this.position(value));
  }
}

// The legend: a gradient bar with its lowest, middle and highest value written under it.
// `whose`: whose largest weight the relative scale ends at.
export function drawLegend(container, scale, whose = "this head's") {
  container.replaceChildren();
  const bar = document.createElement("div");
  bar.className = "legend-bar";
  const stops = Array.from({ length: 11 }, (_, i) => viridisCss(i / 10)).join(", ");
  bar.style.background = `linear-gradient(to right, ${stops})`;
  const ticks = document.createElement("div");
  ticks.className = "legend-ticks";
  for (const fraction of [0, 0.5, 1]) {
    const tick = document.createElement("span");
    tick.textContent = (scale.max * fraction).toFixed(2);
    ticks.append(tick);
  }
  const caption = document.createElement("p");
  caption.className = "legend-caption";
  caption.textContent =
    scale.mode === "fixed"
      ? "Attention weight, from 0 (dark) to 1 (bright yellow)."
      : `Attention weight, from 0 (dark) to ${whose} largest weight, ${scale.max.toFixed(3)} (bright yellow).`;
  container.setAttribute("aria-label", caption.textContent);
  container.append(bar, ticks, caption);
}
