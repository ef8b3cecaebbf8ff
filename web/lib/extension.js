// The extension itself, built from ComfyUI's `app` and `api` (passed in by web/wanx_imageedit.js,
// the only module that imports them and registers anything).
//
// Every edit node gets an info panel (a DOM widget: estimated cost, sizes, the expand diagram,
// the session total, the endpoint when it is not DashScope's) and a cost badge. The panels are
// recomputed whenever what they show may have changed, from the events the front end already has:
// a workflow load, a widget's callback, ComfyUI's "graphChanged", a link change, a preview image
// loading, a run's events, our settings and the interface language. With the canvas renderer the
// panel is also checked each time its node is drawn. Each panel redraws only when its text changed.

import { computeInfo, isEditNode, loaderFile, ruleOf } from "./graph.js";
import { createSettingsSync, settingsFor } from "./panel.js";
import { createState } from "./state.js";
import { createInfoView, INFO_WIDGET, installStyles, panelHeight } from "./view.js";

const ROUTES = "/wanx_imageedit";
const BADGE_COLORS = { fgColor: "#ffffff", bgColor: "#8D6932" };
const PANEL_MARGIN_PX = 4;

/** Run `after` after object[name] (keeping what was there), the way ComfyUI chains callbacks. */
function chain(object, name, after) {
  const before = object[name];
  object[name] = function chained(...args) {
    const result = before?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

export function createExtension({ app, api, doc = globalThis.document }) {
  const setting = (id) => {
    try {
      return app.extensionManager?.setting?.get?.(id);
    } catch {
      return undefined;
    }
  };
  const state = createState(() => setting("Comfy.Locale") || globalThis.navigator?.language || "en");
  const vueMode = () => globalThis.LiteGraph?.vueNodesMode ?? setting("Comfy.VueNodes.Enabled") === true;
  const rootGraph = () => app.rootGraph ?? app.graph; // app.graph is deprecated in 1.58

  // --- the server ------------------------------------------------------------------------------

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
    if (!response.ok) {
      // The server explains a refusal in {"error"} (e.g. 403: changes only from this machine).
      const error = new Error(data?.error ?? `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  async function refreshStatus() {
    try {
      state.setStatus(await call("GET", "/status"));
    } catch (error) {
      console.info("wanx_imageedit: status unavailable:", error.message);
    }
    return state.status;
  }

  async function loadMessages() {
    try {
      const all = api.getCustomNodesI18n ? await api.getCustomNodesI18n() : await (await api.fetchApi("/i18n")).json();
      state.addMessages(all);
    } catch (error) {
      console.info("wanx_imageedit: no translations:", error.message);
    }
  }

  function toast(severity, detail) {
    try {
      app.extensionManager.toast.add({ severity, summary: "Wanx Image Edit", detail, life: 8000 });
    } catch {
      console.info(`wanx_imageedit: ${detail}`);
    }
  }

  const ctx = {
    doc, state, call, refreshStatus, toast,
    settingGet: setting,
    settingSet: (id, value) => app.extensionManager.setting.set(id, value),
  };
  const sync = createSettingsSync(ctx);
  ctx.flushSettings = () => sync.flush();

  // --- the size of a loader's picture ------------------------------------------------------------

  const probed = new Map(); // /view URL -> {width, height} | "loading" | "failed"

  function viewUrl(file) {
    const query = new URLSearchParams({ filename: file.filename, type: file.type, subfolder: file.subfolder });
    return api.apiURL(`/view?${query}`);
  }

  function shows(img, file) {
    try {
      const params = new URL(img.src, globalThis.location?.href).searchParams;
      return params.get("filename") === file.filename && (params.get("subfolder") ?? "") === file.subfolder;
    } catch {
      return false;
    }
  }

  /** The front end's own preview when it shows the file the widget names; else our own copy of
   *  the picture, loaded once (the preview may still be loading, or not be made at all). */
  function imageSize(node) {
    const file = loaderFile(node);
    const img = node.imgs?.[0];
    if (img?.naturalWidth > 0 && (!file || shows(img, file))) {
      return { width: img.naturalWidth, height: img.naturalHeight };
    }
    if (!file) return null;
    const url = viewUrl(file);
    const known = probed.get(url);
    if (known === undefined) {
      probed.set(url, "loading");
      const probe = new Image();
      probe.onload = () => {
        probed.set(url, { width: probe.naturalWidth, height: probe.naturalHeight });
        schedule();
      };
      probe.onerror = () => probed.set(url, "failed");
      probe.src = url;
    }
    return typeof known === "object" ? known : null;
  }

  // --- the panels --------------------------------------------------------------------------------

  const decorated = new Set();
  const infoContext = {
    msg: state.msg, sessionTotal: state.sessionTotal, imageSize,
    get status() {
      return state.status;
    },
  };

  function refreshNode(node, force = false) {
    const view = node.wanxView;
    if (!view) return;
    const info = computeInfo(node, infoContext);
    node.wanxInfo = info; // what the panel shows (tests and the curious read it)
    const chip = vueMode();
    if (view.render(info, { chip, force }) && !chip) app.canvas?.setDirty?.(true, false); // the title badge
  }

  function refreshAll(force = false) {
    for (const node of [...decorated]) {
      if (!node.graph) continue; // removed, or in a closed subgraph
      refreshNode(node, force);
    }
  }

  let queued = false;
  function schedule() {
    if (queued) return;
    queued = true;
    queueMicrotask(() => {
      queued = false;
      refreshAll();
    });
  }

  function watchWidgets(node) {
    for (const widget of node.widgets ?? []) {
      if (widget.name === INFO_WIDGET || widget.wanxWatched) continue;
      widget.wanxWatched = true;
      chain(widget, "callback", schedule); // Nodes 2.0 calls only the callback, the canvas also onWidgetChanged
    }
  }

  function decorate(node) {
    if (node.wanxView || !isEditNode(node, state.status) || typeof node.addDOMWidget !== "function") return;
    const view = createInfoView(doc);
    node.wanxView = view;
    // The canvas renderer places the element inside a margin on each side of the widget's height.
    const height = () => panelHeight(ruleOf(node, state.status)) + 2 * PANEL_MARGIN_PX;
    const widget = node.addDOMWidget(INFO_WIDGET, INFO_WIDGET, view.element, {
      serialize: false, hideOnZoom: true, margin: PANEL_MARGIN_PX, getValue: () => "", setValue: () => {},
      getMinHeight: height, getMaxHeight: height,
      onDraw: () => refreshNode(node), // the canvas renderer is drawing this node
    });
    widget.serialize = false; // not in widgets_values
    widget.options.serialize = false; // not in the prompt
    if (Array.isArray(node.badges) && globalThis.LGraphBadge) {
      // Nodes 2.0 reads node.badges once; there the badge is on the panel instead (empty text hides this).
      const text = () => (vueMode() ? "" : node.wanxInfo?.badge ?? "…");
      const badge = () => new globalThis.LGraphBadge({ text: text(), ...BADGE_COLORS });
      badge.wanxCost = true; // ours, among the front end's own (the pack's name, ...)
      node.badges.push(badge);
    }
    // Laid out anew (Nodes 2.0 switched on or off moves the element into or out of a Vue node): the
    // badge moves between the title and the panel.
    if (typeof ResizeObserver === "function") new ResizeObserver(schedule).observe(view.element);
    chain(node, "onRemoved", () => decorated.delete(node));
    decorated.add(node);
    fit(node);
    refreshNode(node);
  }

  /** Grow the node to show the whole panel (a workflow saved with a smaller node would cut it off). */
  function fit(node) {
    const size = node.computeSize?.();
    if (!size || !node.size) return;
    if (node.size[0] < size[0] || node.size[1] < size[1]) {
      node.setSize?.([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
    }
  }

  /** Every node: a widget or a link that changes may change what an edit node downstream shows. */
  function watchNode(node) {
    watchWidgets(node);
    if (!node.wanxWatched) {
      node.wanxWatched = true;
      chain(node, "onConnectionsChange", schedule);
    }
    decorate(node);
  }

  function allNodes() {
    const graphs = [rootGraph(), ...(rootGraph()?.subgraphs?.values?.() ?? [])];
    return graphs.flatMap((graph) => graph?.nodes ?? []);
  }

  // --- ComfyUI's events --------------------------------------------------------------------------

  function listen() {
    const session = state.session;
    const sessionChanged = (changed) => changed && state.changed("session");
    api.addEventListener("execution_start", () => session.start());
    api.addEventListener("execution_cached", (e) => session.cached(e.detail?.prompt_id, e.detail?.nodes));
    api.addEventListener("executed", (e) => sessionChanged(session.executed(e.detail)));
    api.addEventListener("wanx_imageedit.progress", (e) => session.progress(e.detail));
    for (const name of ["execution_success", "execution_error", "execution_interrupted"]) {
      api.addEventListener(name, () => sessionChanged(session.end()));
    }
    api.addEventListener("graphChanged", schedule); // any change the user made, after it is done
    const settingsEvents = app.ui?.settings;
    // Front end 1.27 announces setting changes here (1.58 reloads the workflow on a new language).
    for (const id of ["Comfy.Locale", "Comfy.VueNodes.Enabled"]) {
      settingsEvents?.addEventListener?.(`${id}.change`, () => setTimeout(() => refreshAll(true), 0));
    }
    // With Nodes 2.0 a Load Image preview is an <img> in the node: once it loads, node.imgs is set.
    doc.addEventListener("load", (e) => {
      if (e.target?.tagName === "IMG" && e.target.closest?.("[data-node-id]")) setTimeout(schedule, 0);
    }, true);
    state.subscribe(schedule);
  }

  const extension = {
    name: "WanxImageEdit",
    settings: settingsFor(ctx, sync),
    async setup() {
      installStyles(doc);
      listen();
      sync.watch(); // the Custom base URL field's commits (Enter, leaving it)
      await Promise.all([loadMessages(), refreshStatus()]);
      await sync.adopt(state.status);
      for (const node of allNodes()) watchNode(node);
      refreshAll();
    },
    nodeCreated(node) {
      watchNode(node);
    },
    loadedGraphNode(node) {
      if (node.wanxView) fit(node); // after the workflow's own size was applied
    },
    afterConfigureGraph() {
      for (const node of allNodes()) {
        decorate(node); // nodes made before the status arrived
        if (node.wanxView) fit(node);
      }
      schedule();
    },
  };

  // For tests and the curious: computed state, never the key (the page never holds it).
  const probe = {
    state, refresh: refreshAll, refreshStatus, vueMode,
    sessionTotal: () => state.sessionTotal(),
    computeInfo: (node) => computeInfo(node, infoContext),
  };
  return { extension, probe };
}
