// Drawing: the info panel of an edit node as plain DOM (the lines and the expand diagram as SVG),
// the stylesheet, and the title badge. A DOM panel shows the same thing with Nodes 2.0 on or off:
// with Nodes 2.0 the front end moves the element into the Vue node, without it it floats the
// element over the canvas; nobody has to repaint a canvas for it. Nothing happens at import.

import { maxLines } from "./graph.js";

export const INFO_WIDGET = "wanx_info";
export const LINE_PX = 15;
export const DIAGRAM_PX = 100;
const PAD_PX = 6;
const SVG_NS = "http://www.w3.org/2000/svg";
const STYLE_ID = "wanx-imageedit-style";

// The info panel uses ComfyUI's palette variables (--input-text, --descrip-text), which every front
// end defines. The settings controls copy the look of the settings dialog around them, which differs
// by front end: "tokens" for the design tokens of 1.58 (--secondary, --foreground, --accent,
// --primary, ...), "prime" for the PrimeVue tokens of 1.27 (--p-inputtext-*, --p-button-*). Only
// variables, no class names of either (PrimeVue's are no longer styled in 1.58).
const CSS = `
.wanx-info { box-sizing: border-box; padding: 3px 12px; font-family: inherit; font-size: 12px;
  line-height: ${LINE_PX}px; color: var(--input-text, #c8c8c8); pointer-events: none; overflow: hidden;
  user-select: none; }
.wanx-info .wanx-line { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; height: ${LINE_PX}px; }
.wanx-info .wanx-muted { color: var(--descrip-text, #8a8a8a); }
.wanx-info .wanx-warn { color: var(--warning, #f0a040); }
.wanx-info .wanx-chip { display: inline-block; margin: 2px 0 4px; padding: 1px 8px; border-radius: 9px;
  background: #8d6932; color: #fff; font-weight: 600; }
.wanx-info svg { display: block; width: 100%; height: ${DIAGRAM_PX - 8}px; margin-top: 4px; }

.wanx-settings { display: flex; flex-direction: column; align-items: flex-end; gap: 0.4rem; }
.wanx-settings .wanx-row { display: flex; align-items: center; gap: 0.4rem; }
.wanx-settings .wanx-status, .wanx-settings .wanx-result { max-width: 30rem; font-size: 0.8rem; line-height: 1.35;
  white-space: normal; text-align: right; }
.wanx-settings input.wanx-input { box-sizing: border-box; width: 18rem; min-width: 0; margin: 0; font-family: inherit;
  outline: none; appearance: none; }
.wanx-settings button.wanx-button { box-sizing: border-box; margin: 0; cursor: pointer; font-family: inherit;
  white-space: nowrap; appearance: none; }
.wanx-settings button.wanx-button:disabled { opacity: 0.5; cursor: default; }

.wanx-tokens { color: var(--foreground, var(--input-text)); }
.wanx-tokens input.wanx-input { height: 2.5rem; padding: 0.5rem 1rem; border: none; border-radius: 0.5rem;
  font-size: 0.875rem; line-height: 1.25rem; background: var(--secondary, var(--comfy-input-bg));
  color: var(--foreground, var(--input-text)); }
.wanx-tokens input.wanx-input::placeholder { color: var(--muted-foreground, var(--descrip-text)); }
.wanx-tokens input.wanx-input:focus-visible { box-shadow: 0 0 0 1px var(--ring, var(--border-color)); }
.wanx-tokens button.wanx-button { height: 2.5rem; padding: 0.5rem 1rem; border: none; border-radius: 0.5rem;
  font-size: 0.875rem; line-height: 1.25rem; font-weight: 500; background: var(--secondary, var(--comfy-input-bg));
  color: var(--foreground, var(--input-text)); transition: background-color 0.15s; }
.wanx-tokens button.wanx-button:hover:not(:disabled) { background: var(--accent, var(--border-color)); }
.wanx-tokens button.wanx-button.wanx-primary { background: var(--primary, var(--border-color)); }
.wanx-tokens button.wanx-button.wanx-primary:hover:not(:disabled) { opacity: 0.9; }
.wanx-tokens button.wanx-button:focus-visible { outline: none; box-shadow: 0 0 0 1px var(--ring, var(--border-color)); }
.wanx-tokens .wanx-muted { color: var(--muted-foreground, var(--descrip-text)); }
.wanx-tokens .wanx-warn { color: var(--warning, #f0a040); }
.wanx-tokens .wanx-error { color: var(--color-coral-500, var(--error-text)); }
.wanx-tokens .wanx-ok { color: var(--color-success, #70c070); }

.wanx-prime { color: var(--p-text-color); }
.wanx-prime input.wanx-input { padding: var(--p-inputtext-padding-y) var(--p-inputtext-padding-x); font-size: 1rem;
  line-height: normal; border: 1px solid var(--p-inputtext-border-color);
  border-radius: var(--p-inputtext-border-radius);
  background: var(--p-inputtext-background); color: var(--p-inputtext-color); box-shadow: var(--p-inputtext-shadow); }
.wanx-prime input.wanx-input::placeholder { color: var(--p-inputtext-placeholder-color); }
.wanx-prime input.wanx-input:hover { border-color: var(--p-inputtext-hover-border-color); }
.wanx-prime input.wanx-input:focus-visible { border-color: var(--p-inputtext-focus-border-color); }
.wanx-prime button.wanx-button { padding: var(--p-button-padding-y) var(--p-button-padding-x); font-size: 1rem;
  line-height: normal; font-weight: var(--p-button-label-font-weight); border-radius: var(--p-button-border-radius);
  border: 1px solid var(--p-button-secondary-border-color); background: var(--p-button-secondary-background);
  color: var(--p-button-secondary-color); transition: background-color 0.15s, border-color 0.15s; }
.wanx-prime button.wanx-button:hover:not(:disabled) { background: var(--p-button-secondary-hover-background);
  border-color: var(--p-button-secondary-hover-border-color); color: var(--p-button-secondary-hover-color); }
.wanx-prime button.wanx-button.wanx-primary { border-color: var(--p-button-primary-border-color);
  background: var(--p-button-primary-background); color: var(--p-button-primary-color); }
.wanx-prime button.wanx-button.wanx-primary:hover:not(:disabled) {
  border-color: var(--p-button-primary-hover-border-color);
  background: var(--p-button-primary-hover-background); color: var(--p-button-primary-hover-color); }
.wanx-prime .wanx-muted { color: var(--p-text-muted-color); }
.wanx-prime .wanx-warn { color: var(--p-orange-400); }
.wanx-prime .wanx-error { color: var(--p-red-400); }
.wanx-prime .wanx-ok { color: var(--p-green-400); }
`;

/** Which settings look the page has: "prime" where PrimeVue's tokens are defined (1.27), else
 *  "tokens" (1.58's design tokens, with ComfyUI's palette variables as the fallback). */
export function settingsFlavor(doc) {
  const root = doc.defaultView?.getComputedStyle?.(doc.documentElement);
  return root?.getPropertyValue("--p-inputtext-background").trim() ? "prime" : "tokens";
}

/** Add the stylesheet once per document (called from the extension's setup, never at import). */
export function installStyles(doc) {
  if (doc.getElementById(STYLE_ID)) return;
  const style = doc.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  doc.head.append(style);
}

/** Height of the panel with the canvas renderer: room for every line the node may show, so that
 *  the node does not jump when a line comes or goes. */
export function panelHeight(rule) {
  return maxLines(rule) * LINE_PX + PAD_PX + (rule === "expand" ? DIAGRAM_PX : 0);
}

export function el(doc, tag, props = {}, children = []) {
  const element = Object.assign(doc.createElement(tag), props);
  for (const child of children) element.append(child);
  return element;
}

function svg(doc, tag, attrs) {
  const element = doc.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  return element;
}

/** The expand canvas (dashed) with the original's place in it, in the canvas's own pixels. */
function expandDiagram(doc, p) {
  const root = svg(doc, "svg", { viewBox: `0 0 ${p.width} ${p.height}`, preserveAspectRatio: "xMidYMid meet" });
  root.dataset.wanx = "expand-preview";
  root.append(svg(doc, "rect", { x: 0, y: 0, width: p.width, height: p.height, fill: "#2c3a4a", stroke: "#6fa8dc",
    "stroke-dasharray": "4 3", "vector-effect": "non-scaling-stroke" }));
  root.append(svg(doc, "rect", { x: p.x, y: p.y, width: p.originalWidth, height: p.originalHeight, fill: "#8a8f98" }));
  if (!p.relative) {
    // Text in canvas units, sized for ~10 px on screen at the diagram's usual scale.
    const scale = Math.min((DIAGRAM_PX - 8) / p.height, 300 / p.width);
    const size = 10 / scale;
    const label = (text, attrs) => {
      const t = svg(doc, "text", { "font-size": size, "font-family": "sans-serif", ...attrs });
      t.textContent = text;
      root.append(t);
    };
    label(`${p.originalWidth}×${p.originalHeight}`, { x: p.x + p.originalWidth / 2, y: p.y + p.originalHeight / 2,
      fill: "#ffffff", "text-anchor": "middle", "dominant-baseline": "central" });
    label(`${p.width}×${p.height}`, { x: p.width - 3 / scale, y: p.height - 3 / scale, fill: "#6fa8dc",
      "text-anchor": "end" });
  }
  return root;
}

/** One node's panel. render() rebuilds the DOM only when what it shows changed (or when forced). */
export function createInfoView(doc) {
  const element = el(doc, "div", { className: "wanx-info" });
  element.dataset.wanx = "info";
  let shown = null;
  return {
    element,
    render(info, { chip = false, force = false } = {}) {
      const key = JSON.stringify([chip ? info.badge : null, info.lines, info.preview]);
      if (key === shown && !force) return false;
      shown = key;
      const children = [];
      if (chip) {
        // Nodes 2.0 reads node.badges once, so the live cost badge sits on the panel there.
        const badge = el(doc, "span", { className: "wanx-chip", textContent: info.badge });
        badge.dataset.wanx = "badge";
        children.push(el(doc, "div", {}, [badge]));
      }
      for (const line of info.lines) {
        const tone = line.warn ? " wanx-warn" : line.muted ? " wanx-muted" : "";
        const row = el(doc, "div", { className: `wanx-line${tone}`, textContent: line.text,
          title: line.title ?? line.text });
        if (line.kind) row.dataset.wanx = line.kind;
        children.push(row);
      }
      if (info.preview) children.push(expandDiagram(doc, info.preview));
      element.replaceChildren(...children);
      element.dataset.state = key;
      return true;
    },
  };
}
