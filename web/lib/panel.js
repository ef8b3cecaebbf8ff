// The settings panel (Settings -> Wanx Image Edit): the key field, the endpoint and the currency.
//
// The key field is a custom element whose setting value is never set: the key goes straight to
// POST /wanx_imageedit/key and lives only in a 0600 file on the server, bound to the endpoint in use.
// It never enters ComfyUI's settings store (comfy.settings.json, mirrored to the browser), a
// workflow or browser storage. Endpoint and currency are ordinary settings; the server's
// settings.json is what the nodes use, so the panel takes the server's values at start-up and sends
// only the changes the user commits (a new endpoint makes the server remove the stored key, and the
// panel says so; hence a URL is sent once it is committed, never halfway through typing it). The
// server refuses changes from other machines (403): the panel shows its words.
// Nothing happens at import: the extension passes in what the panel needs (`ctx`).

import { customEndpoint } from "./graph.js";
import { el, settingsFlavor } from "./view.js";

export const SETTING_IDS = {
  key: "WanxImageEdit.ApiKey",
  endpoint: "WanxImageEdit.Endpoint",
  customUrl: "WanxImageEdit.CustomBaseUrl",
  currency: "WanxImageEdit.Currency",
};
const CATEGORY = ["Wanx Image Edit", "DashScope"];

/** The settings as data (the English texts equal locales/en/settings.json; a test checks it). */
export const SETTING_DEFS = [
  {
    id: SETTING_IDS.key, category: [...CATEGORY, "ApiKey"], sortOrder: 40, name: "DashScope API key (China (Beijing))",
    tooltip: "Stored on the ComfyUI server in its user directory (owner-only file), never in workflows, images or " +
      "the browser, and sent only to the endpoint saved with it. DASHSCOPE_API_KEY in the environment wins " +
      "over it.",
    type: "custom", defaultValue: "",
  },
  {
    id: SETTING_IDS.endpoint, category: [...CATEGORY, "Endpoint"], sortOrder: 30, name: "Endpoint",
    tooltip: "China (Beijing) is the only region with wanx2.1-imageedit. Choose a custom base URL for a gateway " +
      "or the local emulator. Changing it removes a key saved here (save the key again); a key from the " +
      "environment or a key file is never redirected. DASHSCOPE_HTTP_BASE_URL in the environment wins.",
    type: "combo", defaultValue: "beijing",
    options: [{ text: "China (Beijing)", value: "beijing" }, { text: "Custom base URL", value: "custom" }],
  },
  {
    id: SETTING_IDS.customUrl, category: [...CATEGORY, "CustomBaseUrl"], sortOrder: 20, name: "Custom base URL",
    tooltip: "Used when Endpoint is 'Custom base URL', e.g. https://gateway.example.com/api/v1; sent when you " +
      "press Enter or leave the field. Plain http only to loopback; the international endpoint is refused.",
    type: "text", defaultValue: "",
  },
  {
    id: SETTING_IDS.currency, category: [...CATEGORY, "Currency"], sortOrder: 10, name: "Currency for cost estimates",
    tooltip: "CNY 0.14 per image (China site) or USD 0.020070 (international site). Only generated images are billed.",
    type: "combo", defaultValue: "CNY",
    options: [{ text: "CNY", value: "CNY" }, { text: "USD", value: "USD" }],
  },
];

/** An endpoint URL compared the way the server shows it (no user:password@, query or fragment, no
 *  trailing slash, host in lower case), so a stored URL with a token equals its display form. */
export function endpointKey(url) {
  const text = String(url ?? "").trim();
  if (!text) return "";
  try {
    const u = new URL(text);
    return `${u.protocol}//${u.host}${u.pathname}`.replace(/\/+$/, "");
  } catch {
    return text.replace(/\/+$/, "").toLowerCase();
  }
}

function keySourceText(st, msg) {
  if (st.key_source === "none") return msg("source_none");
  const source = st.key_source === "key_file"
    ? msg("source_key_file", { detail: st.key_source_detail ?? "" })
    : msg(`source_${st.key_source}`);
  return st.key_hint ? `${source}, ${msg("key_hint", { last4: st.key_hint.slice(1) })}` : source;
}

/** Show the outcome of a request: a refusal by the server (403 for a peer that is not this
 *  machine, 400 for a bad value) in its own words, anything else after "Failed:". */
function showError(result, error, msg) {
  result.textContent = error.status ? error.message : msg("request_failed", { message: error.message });
  result.className = "wanx-result wanx-error";
  result.dataset.status = String(error.status ?? "");
}

/**
 * The key "setting": a custom element. It never calls the setter, so the settings store keeps its
 * empty default and the key never reaches comfy.settings.json.
 * @param ctx {doc, state, call(method, path, body), refreshStatus()}
 */
export function keyElement(ctx) {
  const { doc, state } = ctx;
  const msg = state.msg;
  const input = el(doc, "input", {
    type: "password", autocomplete: "new-password", spellcheck: false, placeholder: msg("key_placeholder"),
    className: "wanx-input", name: `wanx-${Math.random().toString(36).slice(2)}`,
  });
  input.dataset.wanx = "key-input";
  const button = (label, role, primary = false) => {
    const b = el(doc, "button", { type: "button", textContent: label,
      className: primary ? "wanx-button wanx-primary" : "wanx-button" });
    b.dataset.wanx = role;
    return b;
  };
  const save = button(msg("key_save"), "save", true);
  const remove = button(msg("key_remove"), "remove");
  const test = button(msg("key_test"), "test");
  const lines = el(doc, "div", { className: "wanx-status" });
  lines.dataset.wanx = "status";
  const result = el(doc, "div", { className: "wanx-result" });
  result.dataset.wanx = "result";
  const root = el(doc, "div", { className: `wanx-settings wanx-${settingsFlavor(doc)}` }, [
    el(doc, "div", { className: "wanx-row" }, [input, save]),
    el(doc, "div", { className: "wanx-row" }, [remove, test]),
    lines, result,
  ]);
  root.dataset.wanx = "settings";

  let mounted = false;
  const render = () => {
    const st = state.status;
    lines.replaceChildren();
    if (!st) return;
    const add = (text, tone) => {
      lines.append(el(doc, "div", { textContent: text, className: tone ? `wanx-${tone}` : "" }));
    };
    add(keySourceText(st, msg));
    if (st.stored_key && st.env_overrides?.api_key) {
      const source = st.key_source === "environment" ? msg("source_environment")
        : msg("source_key_file", { detail: st.key_source_detail ?? "" });
      add(msg("key_overridden", { hint: st.stored_key_hint ?? "", source }), "warn");
    }
    add(msg("endpoint_line", { url: st.base_url, source: msg(`endpoint_source_${st.base_url_source}`) }),
      customEndpoint(st) ? "warn" : ""); // where the key is sent, when it is not DashScope's own
    for (const note of st.notes ?? []) add(note, "warn");
    for (const problem of st.problems ?? []) add(problem, "error");
    const total = state.sessionTotal();
    if (total.images > 0) {
      add(msg(total.estimated ? "session_estimate" : "session", { total: total.text, images: total.images }));
    }
    add(msg("lan_note"), "muted");
  };
  const unsubscribe = state.subscribe((reason, detail) => {
    // The settings dialog re-renders custom settings with a new element: retire the old one.
    if (mounted && !root.isConnected) {
      unsubscribe();
      return;
    }
    if (reason === "notice") done(detail.text, detail.tone);
    render();
  });

  const run = async (target, action) => {
    target.disabled = true;
    try {
      await action();
    } catch (error) {
      showError(result, error, msg);
    } finally {
      target.disabled = false;
    }
  };
  const done = (text, tone = "") => {
    result.textContent = text;
    result.className = `wanx-result${tone ? ` wanx-${tone}` : ""}`;
    delete result.dataset.status;
  };
  save.addEventListener("click", () => run(save, async () => {
    const key = input.value.trim();
    if (!key) {
      done(msg("key_empty"));
      return;
    }
    input.value = ""; // the key leaves the page now; nothing keeps it
    await ctx.flushSettings(); // the key is bound to the endpoint in use: the server must have it first
    const answer = await ctx.call("POST", "/key", { api_key: key });
    state.setStatus(answer);
    done(answer?.message ?? msg("key_saved"));
  }));
  remove.addEventListener("click", () => run(remove, async () => {
    const answer = await ctx.call("DELETE", "/key");
    state.setStatus(answer);
    done(answer?.message ?? msg("key_removed"));
  }));
  test.addEventListener("click", () => run(test, async () => {
    done(msg("key_testing"));
    delete result.dataset.ok;
    const outcome = await ctx.call("POST", "/test", {});
    done(outcome.message, outcome.ok ? "ok" : "error");
    result.dataset.ok = String(outcome.ok);
  }));
  input.addEventListener("keydown", (event) => {
    event.stopPropagation(); // keep ComfyUI's shortcuts out of the key field
    if (event.key === "Enter") save.click();
  });

  render();
  void ctx.refreshStatus();
  requestAnimationFrame(() => {
    mounted = root.isConnected;
  });
  return root;
}

/**
 * Endpoint and currency: sent to the server when the user commits a change, taken from the server
 * at start-up. @param ctx {doc, state, call, refreshStatus(), settingGet(id), settingSet(id, value),
 * toast(severity, text)}
 *
 * A combo is committed when an option is chosen. "Custom base URL" is a text field whose setting
 * the front end changes at every key (1.27 and 1.58 alike), and a pause in the middle of a URL
 * (https://gate) is already a valid endpoint, which would make the server remove the stored key. So
 * the URL is sent only when it is committed: on the field's native `change` event (Enter, or the
 * field losing focus: Tab, a click elsewhere, closing the dialog), or when Custom base URL is
 * chosen as the Endpoint. A change made through the settings API, not typed, is committed at once.
 */
export function createSettingsSync(ctx) {
  let ready = false; // before the first status, onChange only reports registration
  let applying = false; // our own writes while taking the server's values
  let committed = null; // the base_url the server was last given or had at start-up (null: unknown)
  let queue = Promise.resolve(); // one request at a time, answered in order

  /** What the Endpoint settings say now: "" for China (Beijing), null while Custom has no URL yet. */
  function endpointNow() {
    if (ctx.settingGet(SETTING_IDS.endpoint) !== "custom") return "";
    return String(ctx.settingGet(SETTING_IDS.customUrl) ?? "").trim() || null;
  }

  function send(body) {
    queue = queue.then(() => post(body));
    return queue;
  }

  async function post(body) {
    const hadKey = !!ctx.state.status?.stored_key;
    try {
      const answer = await ctx.call("POST", "/settings", body);
      ctx.state.setStatus(answer);
      const message = String(answer?.message ?? "").trim();
      if (hadKey && !answer?.stored_key) {
        notify(message, "warn"); // the server removed the key saved for the old endpoint
      } else if (message && message !== "Saved.") {
        notify(message, "");
      }
    } catch (error) {
      if ("base_url" in body) committed = null; // what the server has is not known: the next commit sends
      notify(error.status ? error.message : ctx.state.msg("request_failed", { message: error.message }), "error");
      await ctx.refreshStatus(); // show what the server really uses
    }
  }

  /** Send the endpoint the settings say, unless the server has it already (or Custom has no URL). */
  function commitEndpoint() {
    const url = endpointNow();
    if (!ready || url === null || url === committed) return queue;
    committed = url;
    return send({ base_url: url });
  }

  function notify(text, tone) {
    ctx.toast(tone === "error" ? "error" : tone === "warn" ? "warn" : "info", text);
    ctx.state.changed("notice", { text, tone });
  }

  const isUrlField = (element) => !!element?.closest?.(`[id="${SETTING_IDS.customUrl}"]`);
  // 1.27 calls onChange before it stores the new value: read the settings once it has.
  const later = (action) => setTimeout(() => void action(), 0);

  /** The onChange handler of one setting. The store calls onChange once at registration with no old
   *  value: not a user's change. */
  function changed(field) {
    return (newValue, oldValue) => {
      if (!ready || applying || oldValue === undefined) return;
      if (field === "currency") later(() => send({ currency: ctx.settingGet(SETTING_IDS.currency) ?? "CNY" }));
      else if (field === "endpoint") later(commitEndpoint);
      else if (!isUrlField(ctx.doc.activeElement)) later(commitEndpoint); // set, not typed: it is whole
      // Typed into the field: it is sent when committed (watch()).
    };
  }

  /** Listen for the URL field's commits (the dialog makes a new field each time it opens). */
  function watch() {
    ctx.doc.addEventListener("change", (event) => {
      if (isUrlField(event.target)) void commitEndpoint();
    }, true);
  }

  /** Make ComfyUI's copies of endpoint and currency show what the server uses. */
  async function adopt(status) {
    if (!status) return;
    const wanted = [];
    const stored = status.stored_base_url ?? "";
    if (endpointKey(endpointNow() ?? "") !== endpointKey(stored)) {
      wanted.push([SETTING_IDS.endpoint, stored ? "custom" : "beijing"]);
      if (stored) wanted.push([SETTING_IDS.customUrl, stored]);
    }
    if (status.currency && ctx.settingGet(SETTING_IDS.currency) !== status.currency) {
      wanted.push([SETTING_IDS.currency, status.currency]);
    }
    applying = true;
    try {
      for (const [id, value] of wanted) await ctx.settingSet(id, value);
    } catch (error) {
      console.warn("wanx_imageedit: could not update the settings", error);
    } finally {
      applying = false;
      ready = true;
    }
    committed = endpointNow() ?? "";
  }

  /** Before the key is saved (it is bound to the endpoint in use): a commit not sent yet, then every
   *  request still under way. */
  function flush() {
    return commitEndpoint();
  }

  return { changed, watch, adopt, flush };
}

/** The setting definitions ComfyUI registers, with the panel's renderer and change handlers. */
export function settingsFor(ctx, sync) {
  const handlers = {
    [SETTING_IDS.endpoint]: sync.changed("endpoint"),
    [SETTING_IDS.customUrl]: sync.changed("url"),
    [SETTING_IDS.currency]: sync.changed("currency"),
  };
  return SETTING_DEFS.map((def) => {
    if (def.id === SETTING_IDS.key) return { ...def, type: () => keyElement(ctx) };
    return { ...def, onChange: handlers[def.id] };
  });
}
