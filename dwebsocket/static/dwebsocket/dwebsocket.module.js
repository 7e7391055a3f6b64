// dwebsocket browser client as an ES module:
//   import { Socket } from "{% static 'dwebsocket/dwebsocket.module.js' %}";
// (.js, not .mjs: every server maps .js to JavaScript, which a module script needs).
// The code is dwebsocket.js (one copy, also a plain script); importing it defines the
// `dwebsocket` global as well.
import "./dwebsocket.js";

export const { Socket, DEFAULTS } = globalThis.dwebsocket;
export default globalThis.dwebsocket;
