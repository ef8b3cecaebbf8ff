// Wanx 2.1 Image Edit: the ComfyUI front-end extension.
//
// - Settings (Settings -> Wanx Image Edit): the DashScope key, the endpoint and the currency.
//   The key field is a custom element whose setting value is never set: the key goes straight to
//   POST /wanx_imageedit/key and lives only in a 0600 file on the server. It never enters ComfyUI's
//   settings store (comfy.settings.json, mirrored to the browser), a workflow, or browser storage.
// - On every edit node: the estimated cost (n x batch x unit price) as a badge and a line, the
//   input/output sizes (with "will be resized to" when the input is outside 512-4096 px), a live
//   diagram of the expand canvas, and the session's running total.
// - The session total sums report["cost"]["billed"] of every report seen in an `executed` event
//   (a Preview Any on the report output, or the node's own ui "wanx_report"), deduplicated by task id
//   and ignoring cached replays. Tasks that were really sent and finished with no report in sight
//   are estimated from the node's progress text (done tasks x n) and marked "≈".
//
// The pure helpers are exported so that a test can run them under Node and compare them with Python.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ROUTES = "/wanx_imageedit";
const NODE_PREFIX = "WanxImageEdit_";
const INFO_WIDGET = "wanx_info";
const LINE_PX = 15;
const DIAGRAM_PX = 100;

// --- pure helpers (mirrors of nodes/core: images.plan_fit and functions.output_size) ---------------

/** Python's round() for a float: half to even, on the exact binary value. */
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** round(num / den) half to even, exactly, for non-negative integers (den > 0). */
export function divRoundHalfEven(num, den) {
  const q = Math.floor(num / den);
  const twice = 2 * (num - q * den);
  if (twice > den) return q + 1;
  if (twice < den) return q;
  return q % 2 === 0 ? q : q + 1;
}

/** images.plan_fit: the size sent for an input of width x height. One uniform scale, the one
 *  closest to 1 that brings both sides into [minSide, maxSide]; null when none exists (> 8:1). */
export function fitSize(width, height, minSide = 512, maxSide = 4096) {
  width = Math.trunc(width);
  height = Math.trunc(height);
  if (!(width > 0 && height > 0)) return null;
  const inside = (side) => side >= minSide && side <= maxSide;
  if (inside(width) && inside(height)) return { width, height, resized: false };
  const long = Math.max(width, height);
  const short = Math.min(width, height);
  if (long * minSide > short * maxSide) return null;
  const [num, den] = long > maxSide ? [maxSide, long] : [minSide, short];
  return { width: divRoundHalfEven(width * num, den), height: divRoundHalfEven(height * num, den), resized: true };
}

/** functions.output_size for a sent size: "same", "upscale" (x upscale_factor) or "expand". */
export function outputSize(rule, sent, values) {
  if (rule === "upscale") {
    const factor = Math.trunc(Number(values.upscale_factor ?? 1));
    return { width: sent.width * factor, height: sent.height * factor };
  }
  if (rule === "expand") {
    const v = (name) => Number(values[name] ?? 1.0);
    return {
      width: roundHalfEven((sent.width * (v("left_scale") + v("right_scale"))) / 2),
      height: roundHalfEven((sent.height * (v("top_scale") + v("bottom_scale"))) / 2),
    };
  }
  return { width: sent.width, height: sent.height };
}

/** Where the original sits on the expanded canvas (the half-dimension rule). */
export function expandLayout(sent, values) {
  const v = (name) => Number(values[name] ?? 1.0);
  const out = outputSize("expand", sent, values);
  return { ...out, x: Math.round((sent.width * (v("left_scale") - 1)) / 2),
    y: Math.round((sent.height * (v("top_scale") - 1)) / 2), originalWidth: sent.width, originalHeight: sent.height };
}

export function formatMoney(currency, amount) {
  if (currency === "CNY") return `CNY ${amount.toFixed(2)}`;
  let text = amount.toFixed(6).replace(/0+$/, "").replace(/\.$/, "");
  if (!text.includes(".")) text += ".00";
  return `${currency} ${text}`;
}

/** A report JSON string of one of our edit nodes, or null: per task, the images billed
 *  (usage.image_count; 0 for results served from the cache). */
export function parseReport(text) {
  if (typeof text !== "string" || !text.includes("wanx2.1-imageedit")) return null;
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    return null;
  }
  if (!data || data.model !== "wanx2.1-imageedit" || typeof data.usage?.image_count !== "number") return null;
  const items = (data.items ?? []).map((item) => ({
    taskId: typeof item?.task_id === "string" && item.task_id ? item.task_id : null,
    imageCount: Number(item?.image_count ?? 0), cached: !!item?.cached,
  }));
  const cost = data.cost ?? {};
  return {
    items, imageCount: data.usage.image_count, currency: cost.currency ?? null,
    unitPrice: typeof cost.unit_price === "number" ? cost.unit_price : null,
    billed: typeof cost.billed === "number" ? cost.billed : null,
  };
}

/** The node's progress text ("image 1: done (task X)") -> [{index, state, taskId}]. */
export function parseProgress(text) {
  const items = [];
  for (const line of String(text ?? "").split("\n")) {
    const match = /^image (\d+): (\S+)(?: \(task ([^)\s]+)\))?/.exec(line.trim());
    if (match) items.push({ index: Number(match[1]), state: match[2], taskId: match[3] ?? null });
  }
  return items;
}

// --- state ---------------------------------------------------------------------------------------

const state = {
  status: null, // GET /wanx_imageedit/status
  messages: {}, // locale -> {key: text}, from ComfyUI's /i18n (our locales/*/main.json)
};

const session = {
  exact: new Map(), // task id -> {billed, currency, images}
  reports: [], // reports with no task id (counted once each)
  estimates: new Map(), // task id -> {images, currency, unit}
  cachedNodes: new Set(), // "prompt:node" replays to ignore
  progress: new Map(), // node id -> last progress text of the running prompt
  sent: new Set(), // "node:image" seen queued/submitting/running: really sent (a cache hit starts "done")
  promptId: null,
};

function locale() {
  let value = null;
  try {
    value = app.extensionManager?.setting?.get?.("Comfy.Locale");
  } catch {
    value = null;
  }
  return String(value || navigator.language || "en").split("-")[0];
}

export function msg(key, vars = {}) {
  const text = state.messages[locale()]?.[key] ?? state.messages.en?.[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (all, name) => (name in vars ? String(vars[name]) : all));
}

async function loadMessages() {
  try {
    const all = api.getCustomNodesI18n ? await api.getCustomNodesI18n() : await (await api.fetchApi("/i18n")).json();
    for (const [lang, data] of Object.entries(all ?? {})) {
      if (data?.wanxImageEdit) state.messages[lang] = data.wanxImageEdit;
    }
  } catch (error) {
    console.warn("wanx_imageedit: no translations", error);
  }
}

async function call(method, path, body) {
  const init = { method, headers: { "Content-Type": "application/json" } };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await api.fetchApi(ROUTES + path, init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new Error(data?.error ?? `HTTP ${response.status}`);
  return data;
}

async function refreshStatus() {
  try {
    state.status = await call("GET", "/status");
  } catch (error) {
    console.warn("wanx_imageedit: status unavailable", error);
  }
  app.graph?.setDirtyCanvas?.(true, true);
  for (const render of statusViews) render();
  return state.status;
}

function toast(severity, detail) {
  try {
    app.extensionManager?.toast?.add({ severity, summary: "Wanx Image Edit", detail, life: 6000 });
  } catch {
    console.log(`wanx_imageedit: ${detail}`);
  }
}

// --- session total -------------------------------------------------------------------------------

export function sessionTotal() {
  const currency = state.status?.currency ?? "CNY";
  const unit = state.status?.prices?.[currency] ?? state.status?.unit_price ?? 0;
  let total = 0;
  let images = 0;
  let estimated = false;
  const add = (entry) => {
    images += entry.images;
    // A report billed in another currency (the setting changed) is converted by image count.
    total += entry.currency === currency && entry.billed != null ? entry.billed : entry.images * unit;
  };
  for (const entry of session.exact.values()) add(entry);
  for (const entry of session.reports) add(entry);
  for (const [taskId, entry] of session.estimates) {
    if (session.exact.has(taskId)) continue;
    estimated = true;
    add({ images: entry.images, currency, billed: null });
  }
  return { total, images, estimated, currency, text: formatMoney(currency, total) };
}

function countReport(report) {
  const price = (images) => (report.unitPrice == null ? null : images * report.unitPrice);
  const untracked = report.items.filter((item) => !item.taskId);
  if (report.items.length === 0 || untracked.length === report.items.length) {
    // No task ids to deduplicate by: count the report's own total once.
    session.reports.push({ images: report.imageCount, billed: report.billed, currency: report.currency });
    return;
  }
  for (const item of report.items) {
    if (!item.taskId || session.exact.has(item.taskId)) continue; // each task counts once, however often shown
    session.exact.set(item.taskId, { images: item.imageCount, billed: price(item.imageCount), currency: report.currency });
  }
}

function onExecuted(event) {
  const detail = event.detail ?? {};
  if (session.cachedNodes.has(`${detail.prompt_id}:${detail.node}`)) return; // a cached replay: nothing ran
  const output = detail.output ?? {};
  for (const text of [...(output.wanx_report ?? []), ...(output.text ?? [])]) {
    const report = parseReport(text);
    if (report) countReport(report);
  }
  app.graph?.setDirtyCanvas?.(true, false);
}

function onProgressText(event) {
  const { nodeId, text } = event.detail ?? {};
  if (nodeId == null) return;
  session.progress.set(String(nodeId), text);
  for (const item of parseProgress(text)) {
    if (item.state !== "done") session.sent.add(`${nodeId}:${item.index}`);
  }
}

function onPromptEnd() {
  for (const [nodeId, text] of session.progress) {
    const node = findNode(nodeId);
    const n = Number(widgetValue(node, "n") ?? 1);
    for (const item of parseProgress(text)) {
      const sent = session.sent.has(`${nodeId}:${item.index}`);
      if (item.state === "done" && item.taskId && sent && !session.exact.has(item.taskId)) {
        session.estimates.set(item.taskId, { images: n });
      }
    }
  }
  session.progress.clear();
  session.sent.clear();
  app.graph?.setDirtyCanvas?.(true, false);
  for (const render of statusViews) render();
}

function findNode(nodeId) {
  const id = String(nodeId).split(":").pop();
  return app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id) ?? null;
}

function listen() {
  api.addEventListener("execution_start", (e) => {
    session.promptId = e.detail?.prompt_id ?? null;
    session.progress.clear();
    session.sent.clear();
  });
  api.addEventListener("execution_cached", (e) => {
    for (const node of e.detail?.nodes ?? []) session.cachedNodes.add(`${e.detail.prompt_id}:${node}`);
  });
  api.addEventListener("executed", onExecuted);
  api.addEventListener("progress_text", onProgressText);
  for (const name of ["execution_success", "execution_error", "execution_interrupted"]) {
    api.addEventListener(name, onPromptEnd);
  }
}

// --- reading the graph ---------------------------------------------------------------------------

function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

function inputOrigin(node, name) {
  const slot = node?.inputs?.findIndex((input) => input.name === name) ?? -1;
  if (slot < 0 || node.inputs[slot].link == null) return null;
  const link = node.getInputLink?.(slot);
  const origin = node.getInputNode?.(slot);
  if (!link || !origin) return null;
  if (origin.type === "Reroute") return inputOrigin(origin, origin.inputs?.[0]?.name);
  return { node: origin, slot: link.origin_slot };
}

function firstImageInput(node) {
  return node?.inputs?.find((input) => input.type === "IMAGE")?.name;
}

const LOADERS = new Set(["LoadImage", "LoadImageMask", "LoadImageOutput"]);
const SAME_BATCH_AND_SIZE = new Set(["ImageInvert", "ImageBlend", "ImageSharpen", "ImageBlur", "ImageQuantize"]);

function isEditNode(node) {
  const type = node?.comfyClass ?? node?.type ?? "";
  if (!type.startsWith(NODE_PREFIX)) return false;
  if (state.status?.functions) return type in state.status.functions;
  return !!node.widgets?.some((w) => w.name === "n") && !!node.inputs?.some((i) => i.name === "image");
}

function ruleOf(node) {
  const type = node.comfyClass ?? node.type;
  const known = state.status?.functions?.[type]?.output_rule;
  if (known) return known;
  if (node.widgets?.some((w) => w.name === "upscale_factor")) return "upscale";
  if (node.widgets?.some((w) => w.name === "left_scale")) return "expand";
  return "same";
}

function values(node) {
  return Object.fromEntries((node.widgets ?? []).map((w) => [w.name, w.value]));
}

/** Images in the batch that reaches `node`'s input `name`, or null when unknown. */
function batchOf(origin, depth = 0) {
  if (!origin || depth > 32) return null;
  const { node } = origin;
  const type = node.comfyClass ?? node.type;
  if (LOADERS.has(type)) return 1;
  if (type === "RepeatImageBatch") {
    const inner = batchOf(inputOrigin(node, "image"), depth + 1);
    const amount = Number(widgetValue(node, "amount"));
    return inner == null || !(amount > 0) ? null : inner * amount;
  }
  if (type === "ImageBatch") {
    const a = batchOf(inputOrigin(node, "image1"), depth + 1);
    const b = batchOf(inputOrigin(node, "image2"), depth + 1);
    return a == null || b == null ? null : a + b;
  }
  if (isEditNode(node) && origin.slot === 0) {
    const inner = batchOf(inputOrigin(node, "image"), depth + 1);
    return inner == null ? null : inner * Number(widgetValue(node, "n") ?? 1);
  }
  if (SAME_BATCH_AND_SIZE.has(type)) return batchOf(inputOrigin(node, firstImageInput(node)), depth + 1);
  return null;
}

/** {width, height} of the images reaching an input, or null when unknown before running. */
function sizeOf(origin, depth = 0) {
  if (!origin || depth > 32) return null;
  const { node } = origin;
  const type = node.comfyClass ?? node.type;
  if (LOADERS.has(type)) {
    const img = node.imgs?.[0];
    return img && img.naturalWidth > 0 ? { width: img.naturalWidth, height: img.naturalHeight } : null;
  }
  if (type === "RepeatImageBatch" || SAME_BATCH_AND_SIZE.has(type)) {
    return sizeOf(inputOrigin(node, firstImageInput(node)), depth + 1);
  }
  if (type === "ImageBatch") return sizeOf(inputOrigin(node, "image1"), depth + 1);
  if (type === "ImageScaleBy") {
    const inner = sizeOf(inputOrigin(node, "image"), depth + 1);
    const by = Number(widgetValue(node, "scale_by"));
    return inner && by > 0 ? { width: roundHalfEven(inner.width * by), height: roundHalfEven(inner.height * by) } : null;
  }
  if (isEditNode(node) && origin.slot === 0) {
    const inner = sizeOf(inputOrigin(node, "image"), depth + 1);
    const [minSide, maxSide] = state.status?.side_px ?? [512, 4096];
    const sent = inner && fitSize(inner.width, inner.height, minSide, maxSide);
    return sent ? outputSize(ruleOf(node), sent, values(node)) : null;
  }
  return null;
}

// --- what each node shows ------------------------------------------------------------------------

/** Everything the node draws, computed from its widgets and what is connected. */
export function computeInfo(node) {
  const st = state.status;
  const currency = st?.currency ?? "CNY";
  const unit = st?.prices?.[currency] ?? st?.unit_price ?? null;
  const n = Number(widgetValue(node, "n") ?? 1);
  const origin = inputOrigin(node, "image");
  const batch = batchOf(origin);
  const lines = [];
  let badge;
  if (unit == null) {
    badge = "…";
  } else if (batch == null) {
    badge = msg("cost_badge_unknown", { amount: formatMoney(currency, n * unit) });
    lines.push({ text: msg("cost_line_unknown", { n, unit: formatMoney(currency, unit) }) });
  } else {
    badge = formatMoney(currency, n * batch * unit);
    lines.push({ text: msg("cost_line", { n, batch, unit: formatMoney(currency, unit), total: badge }) });
  }
  const rule = ruleOf(node);
  const vals = values(node);
  const [minSide, maxSide] = st?.side_px ?? [512, 4096];
  const input = sizeOf(origin);
  let sent = null;
  let output = null;
  let preview = null;
  if (!input) {
    lines.push({ text: msg("input_unknown"), muted: true });
    if (rule === "expand") {
      const canvas = outputSize("expand", { width: 1000, height: 1000 }, vals);
      const fw = (canvas.width / 1000).toFixed(2);
      const fh = (canvas.height / 1000).toFixed(2);
      lines.push({ text: msg("output_relative", { fw, fh }) });
      preview = { relative: true, ...expandLayout({ width: 1000, height: 1000 }, vals) };
    } else if (rule === "upscale") {
      const f = Math.trunc(Number(vals.upscale_factor ?? 1));
      lines.push({ text: msg("output_relative", { fw: f, fh: f }) });
    }
  } else {
    sent = fitSize(input.width, input.height, minSide, maxSide);
    if (!sent) {
      lines.push({ text: `${msg("input_size", { w: input.width, h: input.height })}: ${msg("cannot_fit")}`, warn: true });
    } else {
      if (sent.resized) {
        lines.push({ text: `${msg("input_size", { w: input.width, h: input.height })} ` +
          msg("resized", { w: sent.width, h: sent.height, min: minSide, max: maxSide }), warn: true });
      } else {
        lines.push({ text: msg("input_size", { w: input.width, h: input.height }) });
      }
      output = outputSize(rule, sent, vals);
      let text = msg("output_size", { w: output.width, h: output.height });
      if (rule === "expand") {
        preview = { relative: false, ...expandLayout(sent, vals) };
        text += `, ${msg("original_at", { x: preview.x, y: preview.y })}`;
      }
      lines.push({ text });
      if (rule !== "same" && (output.width > maxSide || output.height > maxSide)) {
        lines.push({ text: msg("over_limit", { max: maxSide }), warn: true });
      }
    }
  }
  const total = sessionTotal();
  if (total.images > 0) {
    lines.push({ text: msg(total.estimated ? "session_estimate" : "session", { total: total.text, images: total.images }),
      muted: true });
  }
  return { badge, n, batch, unit, currency, input, sent, output, rule, preview, lines };
}

function infoHeight(node) {
  const lines = 4; // cost, input, output (+ warning or session): keep the node from jumping
  return lines * LINE_PX + 6 + (ruleOf(node) === "expand" ? DIAGRAM_PX : 0);
}

function drawInfo(ctx, node, width, y) {
  const info = computeInfo(node);
  node.wanxInfo = info; // what was drawn last (the browser test reads it)
  node.wanxBadge = info.badge;
  ctx.save();
  ctx.font = "11px sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  let line = y + 3;
  for (const item of info.lines.slice(0, 4)) {
    ctx.fillStyle = item.warn ? "#f0a040" : item.muted ? "#8a8a8a" : "#c8c8c8";
    ctx.fillText(fit(ctx, item.text, width - 24), 12, line);
    line += LINE_PX;
  }
  if (info.preview) drawExpand(ctx, info.preview, width, y + 4 * LINE_PX + 6);
  ctx.restore();
}

function fit(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let cut = text;
  while (cut.length > 4 && ctx.measureText(`${cut}…`).width > maxWidth) cut = cut.slice(0, -1);
  return `${cut}…`;
}

function drawExpand(ctx, p, width, top) {
  const boxW = width - 24;
  const boxH = DIAGRAM_PX - 8;
  const scale = Math.min(boxW / p.width, boxH / p.height);
  const w = p.width * scale;
  const h = p.height * scale;
  const x0 = 12 + (boxW - w) / 2;
  const y0 = top + (boxH - h) / 2;
  ctx.fillStyle = "#2c3a4a";
  ctx.fillRect(x0, y0, w, h);
  ctx.setLineDash([4, 3]);
  ctx.strokeStyle = "#6fa8dc";
  ctx.strokeRect(x0 + 0.5, y0 + 0.5, w - 1, h - 1);
  ctx.setLineDash([]);
  ctx.fillStyle = "#8a8f98";
  ctx.fillRect(x0 + p.x * scale, y0 + p.y * scale, p.originalWidth * scale, p.originalHeight * scale);
  ctx.fillStyle = "#ffffff";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  const label = p.relative ? "" : `${p.originalWidth}×${p.originalHeight}`;
  if (label) ctx.fillText(label, x0 + (p.x + p.originalWidth / 2) * scale, y0 + (p.y + p.originalHeight / 2) * scale);
  if (!p.relative) {
    ctx.fillStyle = "#6fa8dc";
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    ctx.fillText(`${p.width}×${p.height}`, x0 + w - 3, y0 + h - 2);
  }
}

function decorate(node) {
  if (!isEditNode(node) || node.widgets?.some((w) => w.name === INFO_WIDGET)) return;
  const widget = {
    name: INFO_WIDGET,
    type: INFO_WIDGET,
    value: "",
    serialize: false, // not in widgets_values
    options: { serialize: false }, // not in the prompt
    computeSize(width) {
      return [width ?? node.size[0], infoHeight(node)];
    },
    draw(ctx, drawnNode, width, y) {
      drawInfo(ctx, drawnNode, width, y);
    },
  };
  node.addCustomWidget(widget);
  const LGraphBadge = globalThis.LGraphBadge;
  if (LGraphBadge && Array.isArray(node.badges)) {
    node.badges.push(() => new LGraphBadge({ text: computeInfo(node).badge, fgColor: "#ffffff", bgColor: "#8D6932" }));
  }
  const size = node.computeSize?.();
  if (size) node.setSize?.([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
}

// --- the settings panel --------------------------------------------------------------------------

const statusViews = new Set();

function el(tag, props = {}, children = []) {
  const element = Object.assign(document.createElement(tag), props);
  for (const child of children) element.append(child);
  return element;
}

function keySourceText(st) {
  if (!st) return "";
  if (st.key_source === "none") return msg("source_none");
  const source = st.key_source === "key_file"
    ? msg("source_key_file", { detail: st.key_source_detail ?? "" })
    : msg(`source_${st.key_source}`);
  return st.key_hint ? `${source}, ${msg("key_hint", { last4: st.key_hint.slice(1) })}` : source;
}

/** The key "setting": a custom element. It never calls the setter, so the settings store keeps its
 *  empty default and the key never reaches comfy.settings.json. */
function keyElement() {
  const input = el("input", {
    type: "password", autocomplete: "new-password", spellcheck: false, placeholder: msg("key_placeholder"),
    className: "p-inputtext p-component", name: `wanx-${Math.random().toString(36).slice(2)}`,
  });
  input.dataset.wanx = "key-input";
  input.style.width = "18rem";
  const button = (label, role) => {
    const b = el("button", { type: "button", textContent: label, className: "p-button p-component p-button-sm" });
    b.dataset.wanx = role;
    b.style.marginLeft = "0.4rem";
    return b;
  };
  const save = button(msg("key_save"), "save");
  const remove = button(msg("key_remove"), "remove");
  const test = button(msg("key_test"), "test");
  const lines = el("div", { className: "wanx-status" });
  lines.dataset.wanx = "status";
  lines.style.cssText = "font-size:0.8rem;line-height:1.35;margin-top:0.4rem;max-width:30rem;white-space:normal";
  const result = el("div");
  result.dataset.wanx = "result";
  result.style.cssText = "font-size:0.8rem;margin-top:0.3rem;max-width:30rem;white-space:normal";

  let root = null;
  const render = () => {
    if (root && !root.isConnected && root.dataset.mounted) {
      statusViews.delete(render); // the settings dialog was closed or re-rendered
      return;
    }
    const st = state.status;
    lines.replaceChildren();
    if (!st) return;
    const add = (text, color) => lines.append(el("div", { textContent: text, style: color ? `color:${color}` : "" }));
    add(keySourceText(st));
    if (st.stored_key && st.env_overrides?.api_key) {
      const source = st.key_source === "environment" ? msg("source_environment") : msg("source_key_file", {
        detail: st.key_source_detail ?? "" });
      add(msg("key_overridden", { hint: st.stored_key_hint ?? "", source }), "#f0a040");
    }
    add(msg("endpoint_line", { url: st.base_url, source: msg(`endpoint_source_${st.base_url_source}`) }));
    for (const problem of st.problems ?? []) add(problem, "#f07070");
    const total = sessionTotal();
    if (total.images > 0) add(msg(total.estimated ? "session_estimate" : "session", { total: total.text, images: total.images }));
    add(msg("lan_note"), "#8a8a8a");
  };
  statusViews.add(render);

  const run = async (button, action) => {
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      result.textContent = msg("request_failed", { message: error.message });
      result.style.color = "#f07070";
    } finally {
      button.disabled = false;
    }
  };
  save.addEventListener("click", () => run(save, async () => {
    const key = input.value.trim();
    if (!key) {
      result.textContent = msg("key_empty");
      return;
    }
    input.value = ""; // the key leaves the page now; nothing keeps it
    state.status = await call("POST", "/key", { api_key: key });
    result.textContent = msg("key_saved");
    result.style.color = "";
    render();
    app.graph?.setDirtyCanvas?.(true, true);
  }));
  remove.addEventListener("click", () => run(remove, async () => {
    state.status = await call("DELETE", "/key");
    result.textContent = msg("key_removed");
    result.style.color = "";
    render();
  }));
  test.addEventListener("click", () => run(test, async () => {
    result.textContent = msg("key_testing");
    result.style.color = "";
    const outcome = await call("POST", "/test", {});
    result.textContent = outcome.message;
    result.style.color = outcome.ok ? "#70c070" : "#f07070";
    result.dataset.ok = String(outcome.ok);
  }));
  input.addEventListener("keydown", (event) => {
    event.stopPropagation(); // keep ComfyUI's shortcuts out of the key field
    if (event.key === "Enter") save.click();
  });

  render();
  void refreshStatus();
  root = el("div", { className: "wanx-key" }, [
    el("div", { style: "display:flex;align-items:center" }, [input, save]),
    el("div", { style: "margin-top:0.4rem" }, [remove, test]),
    lines, result,
  ]);
  root.style.cssText = "display:flex;flex-direction:column;align-items:flex-end";
  requestAnimationFrame(() => {
    if (root.isConnected) root.dataset.mounted = "1";
  });
  return root;
}

const SETTING_IDS = {
  key: "WanxImageEdit.ApiKey",
  endpoint: "WanxImageEdit.Endpoint",
  customUrl: "WanxImageEdit.CustomBaseUrl",
  currency: "WanxImageEdit.Currency",
};
const CATEGORY = ["Wanx Image Edit", "DashScope"];

function setting(id) {
  return app.extensionManager?.setting?.get?.(id);
}

function explicitlySet(id) {
  try {
    return app.ui?.settings?.settingsValues?.[id] !== undefined;
  } catch {
    return false;
  }
}

let pushTimer = null;
let registered = false;

/** Forward endpoint and currency to the server (debounced; typing a URL fires on every key). */
function schedulePush(initial = false) {
  clearTimeout(pushTimer);
  pushTimer = setTimeout(async () => {
    if (initial && ![SETTING_IDS.endpoint, SETTING_IDS.customUrl, SETTING_IDS.currency].some(explicitlySet)) {
      return; // never touched in this browser profile: leave the server's settings as they are
    }
    const custom = setting(SETTING_IDS.endpoint) === "custom";
    const body = { base_url: custom ? String(setting(SETTING_IDS.customUrl) ?? "").trim() : "",
      currency: setting(SETTING_IDS.currency) ?? "CNY" };
    if (custom && !body.base_url) return; // wait until a URL is typed
    try {
      state.status = await call("POST", "/settings", body);
    } catch (error) {
      toast("error", msg("request_failed", { message: error.message }));
    }
    app.graph?.setDirtyCanvas?.(true, true);
    for (const render of statusViews) render();
  }, initial ? 0 : 700);
}

function onSettingChange(newValue, oldValue) {
  schedulePush(!registered || oldValue === undefined);
}

export const SETTINGS = [
  {
    id: SETTING_IDS.key, category: [...CATEGORY, "ApiKey"], sortOrder: 40, name: "DashScope API key (China (Beijing))",
    tooltip: "Stored on the ComfyUI server in its user directory (owner-only file), never in workflows, images or " +
      "the browser. DASHSCOPE_API_KEY in the environment wins over it.",
    type: () => keyElement(), defaultValue: "",
  },
  {
    id: SETTING_IDS.endpoint, category: [...CATEGORY, "Endpoint"], sortOrder: 30, name: "Endpoint",
    tooltip: "China (Beijing) is the only region with wanx2.1-imageedit. Choose a custom base URL for a gateway " +
      "or the local emulator. DASHSCOPE_HTTP_BASE_URL in the environment wins.",
    type: "combo", defaultValue: "beijing",
    options: [{ text: "China (Beijing)", value: "beijing" }, { text: "Custom base URL", value: "custom" }],
    onChange: onSettingChange,
  },
  {
    id: SETTING_IDS.customUrl, category: [...CATEGORY, "CustomBaseUrl"], sortOrder: 20, name: "Custom base URL",
    tooltip: "Used when Endpoint is 'Custom base URL', e.g. https://gateway.example.com/api/v1. Plain http only " +
      "to loopback; the international endpoint is refused.",
    type: "text", defaultValue: "", onChange: onSettingChange,
  },
  {
    id: SETTING_IDS.currency, category: [...CATEGORY, "Currency"], sortOrder: 10, name: "Currency for cost estimates",
    tooltip: "CNY 0.14 per image (China site) or USD 0.020070 (international site). Only generated images are billed.",
    type: "combo", defaultValue: "CNY",
    options: [{ text: "CNY", value: "CNY" }, { text: "USD", value: "USD" }],
    onChange: onSettingChange,
  },
];

// --- registration --------------------------------------------------------------------------------

export const extension = {
  name: "WanxImageEdit",
  settings: SETTINGS,
  async setup() {
    registered = true;
    listen();
    await Promise.all([loadMessages(), refreshStatus()]);
    for (const node of app.graph?.nodes ?? []) decorate(node);
  },
  nodeCreated(node) {
    decorate(node);
  },
};

app.registerExtension(extension);

// For tests and the curious: the computed state, never the key (the page never holds it).
globalThis.wanxImageEdit = { state, session, sessionTotal, computeInfo, refreshStatus, msg };
