// Builds app.js into a Corral component with `jco componentize`.
//
//     npm ci && npm run build [-- OUTPUT.wasm]      (default: js-sum.wasm)
//
// The WIT folder is assembled under build/wit from this example's world (wit/world.wit), the
// packages in Corral's wit/deps/, and wasi:http@0.2.10, the version StarlingMonkey exports:
// Corral's wasi:http text under that package name.
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const corralWit = join(here, '..', '..', 'wit');
const output = resolve(process.argv[2] ?? join(here, 'js-sum.wasm'));
const wit = join(here, 'build', 'wit');

rmSync(wit, { recursive: true, force: true });
mkdirSync(wit, { recursive: true });
cpSync(join(corralWit, 'deps'), join(wit, 'deps'), { recursive: true });
const http = readFileSync(join(corralWit, 'deps', 'http.wit'), 'utf8');
const packageLine = /^package wasi:http@0\.2\.\d+;$/m;
if (!packageLine.test(http)) {
  throw new Error(`${join(corralWit, 'deps', 'http.wit')} does not declare wasi:http@0.2.x`);
}
writeFileSync(
  join(wit, 'deps', 'http-0.2.10.wit'),
  http.replace(packageLine, 'package wasi:http@0.2.10;'),
);
copyFileSync(join(here, 'wit', 'world.wit'), join(wit, 'world.wit'));

mkdirSync(dirname(output), { recursive: true });
execFileSync(
  join(here, 'node_modules', '.bin', 'jco'),
  ['componentize', join(here, 'app.js'), '--wit', wit, '--world-name', 'service', '-o', output],
  { stdio: 'inherit' },
);
