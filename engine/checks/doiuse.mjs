// Check many HTML documents against the caniemail data in one node process.
// Usage: node doiuse.mjs <path to @jsx-email/doiuse-email's dist/index.mjs>
// stdin: {"clients": ["gmail.desktop-webmail", ...], "documents": ["<!DOCTYPE html>...", ...]}
// stdout: [{"errors": [...], "warnings": [...]}, ...], one per document, in order.
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const { DoIUseEmail } = await import(pathToFileURL(process.argv[2]).href);
const input = JSON.parse(readFileSync(0, 'utf8'));
// The package's client list has no outlook.com although its data does (`outlook.outlook-com`): the
// constructor validates names against the list, so the wanted clients are set after it.
const checker = new DoIUseEmail({ emailClients: ['gmail.*'] });
checker.emailClients = input.clients;
const out = input.documents.map((html) => {
  checker.errors = [];
  checker.warnings = [];
  checker.notes = [];
  const result = checker.check(html);
  return { errors: result.errors || [], warnings: result.warnings || [] };
});
process.stdout.write(JSON.stringify(out));
