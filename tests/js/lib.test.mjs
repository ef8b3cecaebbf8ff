// The front end's pure modules (web/lib/), run under Node as they are: no stand-ins for ComfyUI,
// because they import nothing of it. Run: node --test tests/js/ (tests/test_web_lib.py does).
// The size rules are compared with the Python core in tests/test_docs_locales.py.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { test } from "node:test";

const LIB = new URL("../../web/lib/", import.meta.url);
const MODULES = readdirSync(LIB).filter((name) => name.endsWith(".js")).sort();

test("importing every lib module does nothing: no globals, no document needed, nothing registered", () => {
  assert.ok(MODULES.includes("extension.js") && MODULES.includes("geometry.js"), MODULES.join(", "));
  // A fresh Node, so that nothing imported by this file hides what an import adds.
  const script = `
    const before = new Set(Object.getOwnPropertyNames(globalThis));
    for (const url of ${JSON.stringify(MODULES.map((name) => new URL(name, LIB).href))}) await import(url);
    console.log(JSON.stringify(Object.getOwnPropertyNames(globalThis).filter((key) => !before.has(key))));`;
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf-8" });
  assert.deepEqual(JSON.parse(out), []); // and no document: a module touching the DOM at import would have thrown
});

const { createSession, formatMoney, parseProgress } = await import(new URL("session.js", LIB));
const { createState, fill, hostOf } = await import(new URL("state.js", LIB));
const { customEndpoint, loaderFile } = await import(new URL("graph.js", LIB));
const { endpointKey, SETTING_DEFS } = await import(new URL("panel.js", LIB));

const report = (items, { currency = "CNY", unit = 0.14 } = {}) => JSON.stringify({
  model: "wanx2.1-imageedit",
  usage: { image_count: items.reduce((sum, item) => sum + item.image_count, 0) },
  cost: { currency, unit_price: unit, billed: items.reduce((sum, item) => sum + item.image_count, 0) * unit },
  items,
});
const progress = (node, n, items) => ({ node, finished: items.length, total: items.length, elapsed_s: 1.5, n,
  items: items.map(([state, task_id]) => ({ state, task_id })) });

test("a report counts once per task, however often it is shown, and cached replays not at all", () => {
  const session = createSession();
  const shown = report([{ task_id: "t-1", image_count: 2 }, { task_id: "t-2", image_count: 1 }]);
  assert.equal(session.executed({ prompt_id: "p1", node: "5", output: { wanx_report: [shown] } }), true);
  assert.equal(session.executed({ prompt_id: "p1", node: "9", output: { text: [shown] } }), false); // a Preview Any
  session.cached("p2", ["5"]);
  assert.equal(session.executed({ prompt_id: "p2", node: "5", output: { wanx_report: [shown] } }), false);
  const total = session.total("CNY", 0.14);
  assert.deepEqual([total.images, total.estimated, total.text], [3, false, "CNY 0.42"]);
  // A result from the pack's result cache: the report says 0 images for its task.
  session.executed({ prompt_id: "p3", node: "5", output: { wanx_report: [report([{ task_id: "t-9", image_count: 0,
    cached: true }])] } });
  assert.equal(session.total("CNY", 0.14).images, 3);
});

test("tasks that finished with no report are estimated from the structured progress", () => {
  const session = createSession();
  session.start();
  session.progress(progress("7", 2, [["RUNNING", "t-1"], ["queued", null]]));
  session.progress(progress("7", 2, [["done", "t-1"], ["failed", "t-2"]])); // the latest state counts
  session.progress(progress("8", 1, [["cached", "t-0"], ["CANCELED", "t-3"]]));
  assert.equal(session.progressOf(7).items[0].state, "done");
  assert.equal(session.end(), true); // error or Cancel: no executed event came
  let total = session.total("CNY", 0.14);
  assert.deepEqual([total.images, total.estimated, total.text], [2, true, "CNY 0.28"]); // only t-1, × n = 2
  assert.equal(session.progressOf("7"), null);
  // The report for t-1 turns up after all: the exact figure replaces the estimate.
  const late = report([{ task_id: "t-1", image_count: 2 }]);
  session.executed({ prompt_id: "p", node: "7", output: { wanx_report: [late] } });
  total = session.total("CNY", 0.14);
  assert.deepEqual([total.images, total.estimated], [2, false]);
  assert.equal(session.end(), false);
});

test("a total in another currency converts reports by image count", () => {
  const session = createSession();
  const shown = report([{ task_id: "a", image_count: 3 }]);
  session.executed({ prompt_id: "p", node: "1", output: { wanx_report: [shown] } });
  assert.equal(session.total("USD", 0.02007).text, "USD 0.06021");
  assert.equal(session.total("CNY", 0.14).text, "CNY 0.42");
  assert.equal(formatMoney("USD", 1), "USD 1.00");
});

test("progress payloads are checked, not trusted", () => {
  assert.equal(parseProgress(null), null);
  assert.equal(parseProgress({ node: "1" }), null);
  assert.deepEqual(parseProgress({ node: 3, items: [{ state: "PENDING" }], n: 0 }),
    { node: "3", finished: 0, total: 1, elapsedS: 0, n: 1, items: [{ state: "PENDING", taskId: null }] });
});

test("messages follow the interface language, then English, then the key itself", () => {
  let lang = "zh-CN";
  const state = createState(() => lang);
  const seen = [];
  state.subscribe((reason) => seen.push(reason));
  state.addMessages({ en: { wanxImageEdit: { hello: "Hi {name}", only_en: "E" } },
    zh: { wanxImageEdit: { hello: "你好 {name}" } }, fr: { other: {} } });
  assert.equal(state.msg("hello", { name: "A" }), "你好 A");
  assert.equal(state.msg("only_en"), "E");
  assert.equal(state.msg("missing_key"), "missing_key");
  lang = "en";
  assert.equal(state.msg("hello", { name: "B" }), "Hi B");
  assert.equal(fill("{a} {b}", { a: 1 }), "1 {b}");
  assert.deepEqual(seen, ["messages"]);
  assert.equal(state.unitPrice(), null); // no status yet: no price to show
  state.setStatus({ currency: "USD", prices: { CNY: 0.14, USD: 0.02007 } });
  assert.equal(state.unitPrice(), 0.02007);
});

test("the endpoint: shown by host, compared in its display form", () => {
  assert.equal(hostOf("https://gateway.example.com/api/v1"), "gateway.example.com");
  assert.equal(hostOf("http://127.0.0.1:8123/api/v1"), "127.0.0.1:8123");
  assert.equal(customEndpoint({ base_url: "https://dashscope.aliyuncs.com/api/v1", base_url_is_default: true }), false);
  assert.equal(customEndpoint({ base_url: "https://gateway.example.com/api/v1", base_url_is_default: false }), true);
  // A server without base_url_is_default: the source tells.
  assert.equal(customEndpoint({ base_url: "https://x.example/api/v1", base_url_source: "settings" }), true);
  assert.equal(customEndpoint(null), false);
  // The server shows a stored URL without user:password@ or query: the same endpoint.
  assert.equal(endpointKey("https://user:pw@Gateway.Example.com/api/v1/?token=s3cret"),
    endpointKey("https://gateway.example.com/api/v1"));
  assert.notEqual(endpointKey("https://gateway.example.com/api/v2"), endpointKey("https://gateway.example.com/api/v1"));
  assert.equal(endpointKey(""), "");
});

test("a loader's picture is named by its image widget", () => {
  const node = (type, value) => ({ type, widgets: [{ name: "image", value }] });
  assert.deepEqual(loaderFile(node("LoadImage", "cat.png")), { filename: "cat.png", subfolder: "", type: "input" });
  assert.deepEqual(loaderFile(node("LoadImage", "pets/cats/cat 1.png [output]")),
    { filename: "cat 1.png", subfolder: "pets/cats", type: "output" });
  assert.deepEqual(loaderFile(node("LoadImageOutput", "x.png")), { filename: "x.png", subfolder: "", type: "output" });
  assert.equal(loaderFile(node("LoadImage", "")), null);
});

test("the settings are data: four ids, the key one custom-rendered", () => {
  assert.deepEqual(SETTING_DEFS.map((def) => def.id),
    ["WanxImageEdit.ApiKey", "WanxImageEdit.Endpoint", "WanxImageEdit.CustomBaseUrl", "WanxImageEdit.Currency"]);
  assert.equal(SETTING_DEFS[0].defaultValue, "");
});
