// Reading the graph: what reaches an edit node (batch size, image size) and everything its info
// panel shows, computed from the node's widgets, what is connected and the server's status.
// Works on LiteGraph nodes through their own methods; no imports of ComfyUI and nothing at import.

import { expandLayout, fitSize, outputSize, roundHalfEven } from "./geometry.js";
import { formatMoney } from "./session.js";
import { hostOf } from "./state.js";

export const NODE_PREFIX = "WanxImageEdit_";
export const LOADERS = new Set(["LoadImage", "LoadImageMask", "LoadImageOutput"]);
const SAME_BATCH_AND_SIZE = new Set(["ImageInvert", "ImageBlend", "ImageSharpen", "ImageBlur", "ImageQuantize"]);
const MAX_DEPTH = 32;

export function nodeType(node) {
  return node?.comfyClass ?? node?.type ?? "";
}

export function isEditNode(node, status) {
  const type = nodeType(node);
  if (!type.startsWith(NODE_PREFIX)) return false;
  if (status?.functions) return type in status.functions;
  return !!node.widgets?.some((w) => w.name === "n") && !!node.inputs?.some((i) => i.name === "image");
}

export function ruleOf(node, status) {
  const known = status?.functions?.[nodeType(node)]?.output_rule;
  if (known) return known;
  if (node.widgets?.some((w) => w.name === "upscale_factor")) return "upscale";
  if (node.widgets?.some((w) => w.name === "left_scale")) return "expand";
  return "same";
}

// Nodes whose output is their widget's value, known before running.
const PRIMITIVES = new Set(["PrimitiveNode", "PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean", "PrimitiveString",
  "PrimitiveStringMultiline"]);

/** A widget's value; when its input socket is linked to a primitive node, that node's value (the
 *  one the run will use). Linked to anything else, the widget's own value is all that is known. */
export function widgetValue(node, name) {
  const origin = node?.inputs?.some((input) => input.name === name && input.type !== "IMAGE" && input.type !== "MASK")
    ? inputOrigin(node, name) : null;
  if (origin && PRIMITIVES.has(nodeType(origin.node))) {
    const value = origin.node.widgets?.[0]?.value;
    if (value !== undefined) return value;
  }
  return node?.widgets?.find((w) => w.name === name)?.value;
}

function values(node) {
  return Object.fromEntries((node.widgets ?? []).map((w) => [w.name, widgetValue(node, w.name)]));
}

/** The node and output slot feeding input `name`, or null. Reads connectivity through
 *  isInputConnected/getInputLink (input.link is deprecated in front end 1.58); older front ends
 *  without isInputConnected fall back to the slot's link id. */
export function inputOrigin(node, name, depth = 0) {
  const slot = node?.inputs?.findIndex((input) => input.name === name) ?? -1;
  if (slot < 0 || depth > MAX_DEPTH) return null;
  const connected = typeof node.isInputConnected === "function"
    ? node.isInputConnected(slot)
    : node.inputs[slot].link != null;
  if (!connected) return null;
  const link = node.getInputLink?.(slot);
  const origin = node.getInputNode?.(slot);
  if (!link || !origin) return null;
  if (nodeType(origin) === "Reroute") return inputOrigin(origin, origin.inputs?.[0]?.name, depth + 1);
  return { node: origin, slot: link.origin_slot };
}

function firstImageInput(node) {
  return node?.inputs?.find((input) => input.type === "IMAGE")?.name;
}

/** Images in the batch an origin delivers, or null when unknown before running. */
export function batchOf(origin, status, depth = 0) {
  if (!origin || depth > MAX_DEPTH) return null;
  const { node } = origin;
  const type = nodeType(node);
  const inner = (name) => batchOf(inputOrigin(node, name), status, depth + 1);
  if (LOADERS.has(type)) return 1;
  if (type === "RepeatImageBatch") {
    const batch = inner("image");
    const amount = Number(widgetValue(node, "amount"));
    return batch == null || !(amount > 0) ? null : batch * amount;
  }
  if (type === "ImageBatch") {
    const a = inner("image1");
    const b = inner("image2");
    return a == null || b == null ? null : a + b;
  }
  if (isEditNode(node, status) && origin.slot === 0) {
    const batch = inner("image");
    return batch == null ? null : batch * Number(widgetValue(node, "n") ?? 1);
  }
  if (SAME_BATCH_AND_SIZE.has(type)) return inner(firstImageInput(node));
  return null;
}

/** {width, height} of the images an origin delivers, or null when unknown before running.
 *  `imageSize(loaderNode)` tells the size of a loader's picture once it is known. */
export function sizeOf(origin, ctx, depth = 0) {
  if (!origin || depth > MAX_DEPTH) return null;
  const { node } = origin;
  const type = nodeType(node);
  const inner = (name) => sizeOf(inputOrigin(node, name), ctx, depth + 1);
  if (LOADERS.has(type)) return ctx.imageSize(node);
  if (type === "RepeatImageBatch" || SAME_BATCH_AND_SIZE.has(type)) return inner(firstImageInput(node));
  if (type === "ImageBatch") return inner("image1");
  if (type === "ImageScaleBy") {
    const size = inner("image");
    const by = Number(widgetValue(node, "scale_by"));
    return size && by > 0 ? { width: roundHalfEven(size.width * by), height: roundHalfEven(size.height * by) } : null;
  }
  if (isEditNode(node, ctx.status) && origin.slot === 0) {
    const size = inner("image");
    const [minSide, maxSide] = ctx.status?.side_px ?? [512, 4096];
    const sent = size && fitSize(size.width, size.height, minSide, maxSide);
    return sent ? outputSize(ruleOf(node, ctx.status), sent, values(node)) : null;
  }
  return null;
}

/** The picture a loader node shows: {filename, subfolder, type} from its "image" widget
 *  ("sub/name.png [input]"), or null. */
export function loaderFile(node) {
  const value = widgetValue(node, "image");
  if (typeof value !== "string" || !value) return null;
  const match = /^(.*?)(?: \[(input|output|temp)\])?$/.exec(value.trim());
  const path = match[1];
  const cut = path.lastIndexOf("/");
  return {
    filename: cut < 0 ? path : path.slice(cut + 1),
    subfolder: cut < 0 ? "" : path.slice(0, cut),
    type: match[2] ?? (nodeType(node) === "LoadImageOutput" ? "output" : "input"),
  };
}

/** Is the endpoint other than DashScope's default? (Older servers lack base_url_is_default.) */
export function customEndpoint(status) {
  if (!status?.base_url) return false;
  return status.base_url_is_default === undefined ? status.base_url_source !== "default" : !status.base_url_is_default;
}

/** Lines an edit node of `rule` may show at most: cost, endpoint, input, output, limit, session. */
export function maxLines(rule) {
  return rule === "same" ? 5 : 6;
}

/** Everything the node's info panel shows. `ctx`: {status, msg, sessionTotal(), imageSize(node)}. */
export function computeInfo(node, ctx) {
  const { status: st, msg } = ctx;
  const currency = st?.currency ?? "CNY";
  const unit = st?.prices?.[currency] ?? st?.unit_price ?? null;
  const n = Number(widgetValue(node, "n") ?? 1);
  const origin = inputOrigin(node, "image");
  const batch = batchOf(origin, st);
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
  const endpoint = customEndpoint(st) ? hostOf(st.base_url) : null;
  if (endpoint) {
    // The key goes wherever the endpoint points: a changed endpoint must not go unnoticed.
    lines.push({ text: `→ ${endpoint}`, warn: true, kind: "endpoint",
      title: msg("endpoint_line", { url: st.base_url, source: msg(`endpoint_source_${st.base_url_source}`) }) });
  }
  const rule = ruleOf(node, st);
  const vals = values(node);
  const [minSide, maxSide] = st?.side_px ?? [512, 4096];
  const input = sizeOf(origin, ctx);
  let sent = null;
  let output = null;
  let preview = null;
  if (!input) {
    lines.push({ text: msg("input_unknown"), muted: true });
    if (rule === "expand") {
      const unitCanvas = { width: 1000, height: 1000 };
      const canvas = outputSize("expand", unitCanvas, vals);
      const fw = (canvas.width / 1000).toFixed(2);
      const fh = (canvas.height / 1000).toFixed(2);
      lines.push({ text: msg("output_relative", { fw, fh }) });
      preview = { relative: true, ...expandLayout(unitCanvas, vals) };
    } else if (rule === "upscale") {
      const f = Math.trunc(Number(vals.upscale_factor ?? 1));
      lines.push({ text: msg("output_relative", { fw: f, fh: f }) });
    }
  } else {
    sent = fitSize(input.width, input.height, minSide, maxSide);
    const inputText = msg("input_size", { w: input.width, h: input.height });
    if (!sent) {
      lines.push({ text: `${inputText}: ${msg("cannot_fit")}`, warn: true });
    } else {
      if (sent.resized) {
        const resized = msg("resized", { w: sent.width, h: sent.height, min: minSide, max: maxSide });
        lines.push({ text: `${inputText} ${resized}`, warn: true });
      } else {
        lines.push({ text: inputText });
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
  const total = ctx.sessionTotal();
  if (total.images > 0) {
    const key = total.estimated ? "session_estimate" : "session";
    lines.push({ text: msg(key, { total: total.text, images: total.images }), muted: true, kind: "session" });
  }
  return { badge, n, batch, unit, currency, endpoint, input, sent, output, rule, preview, lines };
}
