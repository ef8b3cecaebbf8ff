// What the extension knows, in one object the entry creates once: the server's status (never the
// key: GET /wanx_imageedit/status carries its source and at most its last 4 characters), the
// translated messages, the session's cost and who to tell when any of it changes. No imports and
// nothing at import time (ComfyUI imports every .js under web/).

import { createSession } from "./session.js";

/** Fill "{name}" placeholders; an unknown one stays as it is. */
export function fill(text, vars = {}) {
  return String(text).replace(/\{(\w+)\}/g, (all, name) => (name in vars ? String(vars[name]) : all));
}

/** The host (and port) of an endpoint URL, for "→ host" on the nodes; the URL itself if unparsable. */
export function hostOf(url) {
  try {
    return new URL(url).host || String(url);
  } catch {
    return String(url ?? "");
  }
}

/** @param {() => string} locale the interface language ("en", "zh", ...) */
export function createState(locale) {
  const tables = {}; // lang -> {key: text}, our locales/*/main.json "wanxImageEdit" block
  const listeners = new Set();
  const state = {
    status: null,
    session: createSession(),
    /** ComfyUI's /i18n answer: keep our block of each language. */
    addMessages(all) {
      for (const [lang, data] of Object.entries(all ?? {})) {
        if (data?.wanxImageEdit) tables[lang] = data.wanxImageEdit;
      }
      state.changed("messages");
    },
    msg(key, vars = {}) {
      const lang = String(locale() || "en").split("-")[0];
      return fill(tables[lang]?.[key] ?? tables.en?.[key] ?? key, vars);
    },
    currency() {
      return state.status?.currency ?? "CNY";
    },
    /** Price per generated image in the current currency, or null before the status arrived. */
    unitPrice() {
      const st = state.status;
      return st?.prices?.[state.currency()] ?? st?.unit_price ?? null;
    },
    sessionTotal() {
      return state.session.total(state.currency(), state.unitPrice() ?? 0);
    },
    setStatus(status) {
      if (status) state.status = status;
      state.changed("status");
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    changed(reason, detail) {
      for (const listener of [...listeners]) listener(reason, detail);
    },
  };
  return state;
}
