// dwebsocket browser client as an ES module: `import { Socket } from ".../dwebsocket.mjs"`.
// The code is dwebsocket.js (one copy, also a plain script); importing it defines the
// `dwebsocket` global as well.
import "./dwebsocket.js";

export const { Socket, DEFAULTS } = globalThis.dwebsocket;
export default globalThis.dwebsocket;
