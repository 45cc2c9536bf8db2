#!/usr/bin/env node
// A native-solc-compatible front end for npm `solc` (solcjs), so that forge and py-solc-x can use it
// offline. It speaks the subset of the solc CLI those callers use and prints only what native solc
// would print: `--version`, `--standard-json` (stdin -> stdout), and `--combined-json` over files.
// Imports are resolved from --base-path, each --include-path and node_modules, never from the network.
'use strict';

const fs = require('fs');
const path = require('path');

// solcjs may print banners to stdout while it loads; keep stdout for JSON only.
const realLog = console.log;
console.log = (...args) => process.stderr.write(args.join(' ') + '\n');
const solc = require('solc');
console.log = realLog;

function parseArgs(argv) {
  const opts = { basePath: null, includePaths: [], files: [], combined: null, mode: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (a.includes('=')) return a.slice(a.indexOf('=') + 1);
      i += 1;
      return argv[i];
    };
    if (a === '--version' || a === '-v') opts.mode = 'version';
    else if (a === '--standard-json') opts.mode = 'standard';
    else if (a.startsWith('--combined-json')) { opts.mode = 'combined'; opts.combined = value(); }
    else if (a.startsWith('--base-path')) opts.basePath = value();
    else if (a.startsWith('--include-path')) opts.includePaths.push(value());
    else if (a.startsWith('--allow-paths') || a.startsWith('--evm-version') || a.startsWith('--optimize-runs')) value();
    else if (a.startsWith('--')) { /* flags without values (e.g. --optimize, --no-color) are accepted and ignored */ }
    else opts.files.push(a);
  }
  return opts;
}

function makeImportCallback(opts) {
  const roots = [opts.basePath || process.cwd(), ...opts.includePaths, path.join(__dirname, '..', 'node_modules')];
  return (importPath) => {
    const candidates = path.isAbsolute(importPath) ? [importPath] : roots.map((r) => path.resolve(r, importPath));
    for (const c of candidates) {
      if (fs.existsSync(c) && fs.statSync(c).isFile()) return { contents: fs.readFileSync(c, 'utf8') };
    }
    return { error: `File not found: ${importPath} (searched ${roots.join(', ')})` };
  };
}

function compile(input, opts) {
  return JSON.parse(solc.compile(JSON.stringify(input), { import: makeImportCallback(opts) }));
}

function readStdin() {
  return fs.readFileSync(0, 'utf8');
}

function versionText() {
  return `solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`;
}

// --combined-json abi,bin,bin-runtime,... over source files, as py-solc-x's compile_files uses it.
function combinedJson(opts) {
  const fields = opts.combined.split(',').map((f) => f.trim()).filter(Boolean);
  const outputs = new Set(['abi']);
  const map = {
    abi: 'abi', bin: 'evm.bytecode.object', 'bin-runtime': 'evm.deployedBytecode.object',
    hashes: 'evm.methodIds', metadata: 'metadata', userdoc: 'userdoc', devdoc: 'devdoc',
    'srcmap': 'evm.bytecode.sourceMap', 'srcmap-runtime': 'evm.deployedBytecode.sourceMap',
  };
  for (const f of fields) if (map[f]) outputs.add(map[f]);
  const sources = {};
  for (const f of opts.files) sources[f] = { content: fs.readFileSync(path.resolve(opts.basePath || '.', f), 'utf8') };
  const input = {
    language: 'Solidity', sources,
    settings: { outputSelection: { '*': { '*': [...outputs] } } },
  };
  const out = compile(input, opts);
  const errors = (out.errors || []).filter((e) => e.severity === 'error');
  if (errors.length) {
    for (const e of errors) process.stderr.write((e.formattedMessage || e.message) + '\n');
    return 1;
  }
  const contracts = {};
  const get = (obj, dotted) => dotted.split('.').reduce((o, k) => (o == null ? o : o[k]), obj);
  for (const [file, byName] of Object.entries(out.contracts || {})) {
    for (const [name, c] of Object.entries(byName)) {
      const entry = {};
      for (const f of fields) if (map[f]) entry[f] = get(c, map[f]);
      contracts[`${file}:${name}`] = entry;
    }
  }
  process.stdout.write(JSON.stringify({ contracts, version: solc.version() }) + '\n');
  return 0;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.mode === 'version') {
    process.stdout.write(versionText());
    return 0;
  }
  if (opts.mode === 'standard') {
    const out = compile(JSON.parse(readStdin()), opts);
    process.stdout.write(JSON.stringify(out) + '\n');
    return 0;
  }
  if (opts.mode === 'combined') return combinedJson(opts);
  process.stderr.write('usage: solc --version | --standard-json < input.json | --combined-json FIELDS FILE...\n');
  return 2;
}

process.exitCode = main();
