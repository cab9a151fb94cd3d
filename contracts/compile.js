#!/usr/bin/env node
// Compiles contracts/src/*.sol with solc-js (offline: the compiler ships inside the npm
// package) and writes build/<Contract>.json (abi + bytecode), byte for byte the same on
// every run for the same sources and compiler.
//
//   node contracts/compile.js [--out DIR]     (default: contracts/build)
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const HERE = __dirname;
const SOURCES = ["Token.sol", "PaymentVault.sol"];
const CONTRACTS = { "src/Token.sol": "Token", "src/PaymentVault.sol": "PaymentVault" };
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  // Cancun: what Arbitrum One runs; anvil runs it too.
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};

function parseArgs(argv) {
  let out = path.join(HERE, "build");
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out" && i + 1 < argv.length) {
      out = path.resolve(argv[++i]);
    } else {
      throw new Error(`unknown argument ${argv[i]} (usage: compile.js [--out DIR])`);
    }
  }
  return out;
}

function findImport(importPath) {
  const candidates = [path.join(HERE, importPath), path.join(HERE, "node_modules", importPath)];
  for (const file of candidates) {
    if (fs.existsSync(file)) {
      return { contents: fs.readFileSync(file, "utf8") };
    }
  }
  return { error: `not found: ${importPath} (run make install)` };
}

function main() {
  const out = parseArgs(process.argv.slice(2));
  const sources = {};
  for (const name of SOURCES) {
    sources[`src/${name}`] = { content: fs.readFileSync(path.join(HERE, "src", name), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) {
    process.stderr.write(e.formattedMessage + "\n");
  }
  if (errors.length > 0) {
    process.exit(1);
  }
  fs.mkdirSync(out, { recursive: true });
  for (const [source, name] of Object.entries(CONTRACTS)) {
    const contract = output.contracts[source][name];
    const artifact = {
      contractName: name,
      sourceName: source,
      compiler: `solc ${solc.version()}`,
      settings: { optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion },
      abi: contract.abi,
      bytecode: "0x" + contract.evm.bytecode.object,
    };
    fs.writeFileSync(path.join(out, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
  }
  process.stdout.write(`compiled ${Object.values(CONTRACTS).join(", ")} into ${out}\n`);
}

main();
