// Parses an AsyncAPI document with the AsyncAPI project's own parser (@asyncapi/parser) and
// prints every diagnostic: exit 0 when the document is valid (no error-level diagnostic),
// 1 when not, 2 on a usage or I/O error. Used by tests/tests/events.rs; the parser is
// installed by `./dev setup` (npm, into target/asyncapi-parser).
//
//   node tests/asyncapi/validate.mjs DOCUMENT.json
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";

const [file] = process.argv.slice(2);
if (!file) {
  console.error("usage: node validate.mjs DOCUMENT.json");
  process.exit(2);
}
const modules = process.env.ASYNCAPI_PARSER_DIR;
if (!modules) {
  console.error("ASYNCAPI_PARSER_DIR is not set: the directory npm installed @asyncapi/parser into");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(modules), "package.json"));
const { Parser } = require("@asyncapi/parser");

let text;
try {
  text = await readFile(file, "utf8");
} catch (error) {
  console.error(`cannot read ${file}: ${error.message}`);
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text, { source: path.resolve(file) });
const severities = ["error", "warning", "info", "hint"];
let errors = 0;
for (const d of diagnostics) {
  const level = severities[d.severity] ?? String(d.severity);
  if (d.severity === 0) errors += 1;
  console.log(`${level}: ${d.code}: ${d.message} at /${(d.path ?? []).join("/")}`);
}
if (!document || errors > 0) {
  console.log(`invalid: ${errors} error(s)`);
  process.exit(1);
}
console.log(`valid: AsyncAPI ${document.version()}, ${document.channels().length} channels, ${document.operations().length} operations, ${document.components().messages().length} component messages`);
