// The session's running cost: pure bookkeeping, fed by the extension with ComfyUI's events.
//
// - Exact: report["cost"] of every report seen in an `executed` event (a Preview Any on the
//   report output, or the node's own ui "wanx_report"), one entry per task id, so a report shown
//   twice, or replayed by ComfyUI's cache, counts once.
// - Estimated: a task the node's structured progress (the `wanx_imageedit.progress` event) saw
//   finish ("done") with no report in sight by the end of the prompt (an error or Cancel stopped
//   the node) counts as n images at the current price, and the total is marked "≈". A result
//   served from the pack's result cache ("cached") costs nothing and is never estimated.

/** "CNY 0.14", "USD 0.02007": CNY in fen, USD to the price's own precision. */
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
    imageCount: Number(item?.image_count ?? 0),
    cached: !!item?.cached,
  }));
  const cost = data.cost ?? {};
  return {
    items,
    imageCount: data.usage.image_count,
    currency: cost.currency ?? null,
    unitPrice: typeof cost.unit_price === "number" ? cost.unit_price : null,
    billed: typeof cost.billed === "number" ? cost.billed : null,
  };
}

/** The payload of `wanx_imageedit.progress`, checked: {node, finished, total, elapsed_s, n,
 *  items: [{state, task_id}]}, or null when it is not one. */
export function parseProgress(payload) {
  if (!payload || typeof payload !== "object" || payload.node == null || !Array.isArray(payload.items)) return null;
  return {
    node: String(payload.node),
    finished: Number(payload.finished ?? 0),
    total: Number(payload.total ?? payload.items.length),
    elapsedS: Number(payload.elapsed_s ?? 0),
    n: Math.max(1, Math.trunc(Number(payload.n ?? 1)) || 1),
    items: payload.items.map((item) => ({
      state: String(item?.state ?? ""),
      taskId: typeof item?.task_id === "string" && item.task_id ? item.task_id : null,
    })),
  };
}

export function createSession() {
  const exact = new Map(); // task id -> {images, billed, currency}
  const untracked = []; // reports without task ids, each counted once
  const estimates = new Map(); // task id -> {images}
  const replays = new Set(); // "prompt:node" that ComfyUI served from its cache: nothing ran
  const running = new Map(); // node id -> last progress of the running prompt

  function countReport(report) {
    const price = (images) => (report.unitPrice == null ? null : images * report.unitPrice);
    const tracked = report.items.filter((item) => item.taskId);
    if (tracked.length === 0) {
      untracked.push({ images: report.imageCount, billed: report.billed, currency: report.currency });
      return true;
    }
    let changed = false;
    for (const item of tracked) {
      if (exact.has(item.taskId)) continue; // each task counts once, however often it is shown
      exact.set(item.taskId, { images: item.imageCount, billed: price(item.imageCount), currency: report.currency });
      changed = true;
    }
    return changed;
  }

  return {
    /** execution_start: a new prompt runs. */
    start() {
      running.clear();
    },
    /** execution_cached: these nodes of the prompt replay stored outputs. */
    cached(promptId, nodeIds) {
      for (const node of nodeIds ?? []) replays.add(`${promptId}:${node}`);
    },
    /** executed: count the reports in a node's output; true when the total changed. */
    executed(detail) {
      if (!detail || replays.has(`${detail.prompt_id}:${detail.node}`)) return false;
      const output = detail.output ?? {};
      let changed = false;
      for (const text of [...(output.wanx_report ?? []), ...(output.text ?? [])]) {
        const report = parseReport(text);
        if (report) changed = countReport(report) || changed;
      }
      return changed;
    },
    /** wanx_imageedit.progress: remember the node's latest state. */
    progress(payload) {
      const progress = parseProgress(payload);
      if (progress) running.set(progress.node, progress);
      return progress;
    },
    /** The last progress of a node in the running prompt, or null. */
    progressOf(nodeId) {
      return running.get(String(nodeId)) ?? null;
    },
    /** The prompt ended (success, error or Cancel): estimate finished tasks with no report. */
    end() {
      let changed = false;
      for (const progress of running.values()) {
        for (const item of progress.items) {
          if (item.state !== "done" || !item.taskId || exact.has(item.taskId) || estimates.has(item.taskId)) continue;
          estimates.set(item.taskId, { images: progress.n });
          changed = true;
        }
      }
      running.clear();
      return changed;
    },
    /** The running total in `currency` at `unit` per image (reports billed in another currency,
     *  after the setting changed, are converted by their image count). */
    total(currency, unit) {
      let total = 0;
      let images = 0;
      let estimated = false;
      const add = (entry) => {
        images += entry.images;
        total += entry.currency === currency && entry.billed != null ? entry.billed : entry.images * unit;
      };
      for (const entry of exact.values()) add(entry);
      for (const entry of untracked) add(entry);
      for (const [taskId, entry] of estimates) {
        if (exact.has(taskId)) continue;
        estimated = true;
        add({ images: entry.images, currency, billed: null });
      }
      return { total, images, estimated, currency, text: formatMoney(currency, total) };
    },
  };
}
