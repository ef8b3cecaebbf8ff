// Wanx 2.1 Image Edit: the ComfyUI front-end extension (entry point).
//
// ComfyUI imports every .js under web/, so this is the only file that does anything when it is
// imported: it builds the extension from the modules in web/lib/ (which only export functions)
// and registers it. What the extension does: web/lib/extension.js.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { createExtension } from "./lib/extension.js";

const { extension, probe } = createExtension({ app, api });
app.registerExtension(extension);
globalThis.wanxImageEdit = probe;
