#!/usr/bin/env node
// Bundles the CLI that tsc built (dist/src) into one CommonJS file per command module, so a
// start reads and compiles one file instead of resolving ~80 ES modules, and only the invoked
// command's code is in it. bin/netmangle runs these through vm.Script with a V8 code cache.
//
//   dist/bundle/<module>.cjs   one per module of src/cli/commands/index.ts commandFiles
//   dist/bundle/all.cjs        every command (plain --help, --version, unknown commands)
//   dist/bundle/manifest.json  command -> bundle, each bundle's sha256, and every dist file
//                              it was built from (size, mtime, sha256), so bin/netmangle can
//                              tell a bundle older than dist/ and fall back to dist/src.
//
// koffi (a native addon) stays external and is required at run time, and so do fastify and its
// plugins (the service's HTTP server): 0.9 MB that only `serve` loads, kept out of all.cjs. Each module's
// import.meta.url becomes the URL of its own file under dist/src, so code that finds files
// next to itself (the delay line's worker, bin/netmangle, createRequire) keeps working.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as esbuild from 'esbuild';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const commandsDir = join(dist, 'src', 'cli', 'commands');
const outDir = join(dist, 'bundle');

const { commandFiles } = await import(pathToFileURL(join(commandsDir, 'index.js')).href);
const modules = [...new Set(Object.values(commandFiles))];

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/**
 * Packages a module loads on first use through its `requireLazy` (a createRequire), that the
 * bundle holds anyway: esbuild wraps a required CommonJS package so that it runs at its first
 * require, and it is then read from the bundle (and its code cache) instead of being resolved
 * and compiled file by file from node_modules (yaml: about 40 ms at the first rules file).
 */
const LAZY_BUNDLED = ['yaml'];
const lazyRequire = new RegExp(`\\brequireLazy\\((['"])(${LAZY_BUNDLED.join('|')})\\1\\)`, 'g');

/**
 * Rewrites dist JavaScript for the bundle: import.meta.url becomes the file's own URL, computed
 * from the bundle's place; requireLazy('yaml') becomes require('yaml'), which esbuild bundles.
 */
const importMetaPlugin = {
  name: 'import-meta-url',
  setup(build) {
    build.onLoad({ filter: /\.js$/ }, (args) => {
      const source = readFileSync(args.path, 'utf8');
      if (!args.path.startsWith(dist + '/')) return undefined;
      const lazy = lazyRequire.test(source);
      lazyRequire.lastIndex = 0;
      if (!source.includes('import.meta.url') && !lazy) return undefined;
      const rel = JSON.stringify(relative(dist, args.path));
      const contents = source.replaceAll('import.meta.url', `__netmangleDistUrl(${rel})`).replace(lazyRequire, 'require($1$2$1)');
      return { contents, loader: 'js' };
    });
  },
};

// The bundle lives in dist/bundle/, so dist/ is its parent directory.
const banner = [
  '"use strict";',
  'const __netmangleDist = require("node:url").pathToFileURL(require("node:path").join(__dirname, "..") + "/").href;',
  'const __netmangleDistUrl = (rel) => new URL(rel, __netmangleDist).href;',
].join('\n');

function entrySource(files) {
  const program = JSON.stringify(join(dist, 'src', 'cli', 'program.js'));
  const lines = [`import { runCli } from ${program};`];
  files.forEach((f, i) => lines.push(`import { register as r${i} } from ${JSON.stringify(join(commandsDir, f))};`));
  lines.push(`runCli([...new Set([${files.map((_, i) => `r${i}`).join(', ')}])]);`);
  return lines.join('\n');
}

// The rules file's schema validator as ajv standalone code, beside the module that loads it
// (src/rules/file-validator.ts), so no start compiles the schema.
{
  const { fileSchema } = await import(pathToFileURL(join(dist, 'src', 'rules', 'load.js')).href);
  const { generatedValidatorSource, GENERATED_VALIDATOR } = await import(pathToFileURL(join(dist, 'src', 'rules', 'file-validator.js')).href);
  writeFileSync(join(dist, 'src', 'rules', GENERATED_VALIDATOR), generatedValidatorSource(fileSchema));
}

rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });

const { JIT_V8_FLAGS } = await import(pathToFileURL(join(dist, 'src', 'vm', 'jit.js')).href);
const bundles = {};
const inputs = new Set();
const targets = [...modules.map((f) => ({ name: f.replace(/\.js$/, ''), files: [f] })), { name: 'all', files: modules }];
for (const t of targets) {
  const outfile = join(outDir, `${t.name}.cjs`);
  let result;
  try {
    result = await esbuild.build({
      stdin: { contents: entrySource(t.files), resolveDir: commandsDir, sourcefile: `${t.name}-entry.js`, loader: 'js' },
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: 'node20',
      outfile,
      external: ['koffi', 'fastify', '@fastify/*'],
      banner: { js: banner },
      plugins: [importMetaPlugin],
      metafile: true,
      logLevel: 'warning',
      legalComments: 'none',
      // Fewer bytes to read and scan; identifiers keep their names for stack traces.
      minifyWhitespace: true,
      minifySyntax: true,
    });
  } catch (err) {
    // E.g. a module with top-level await, which CommonJS cannot hold: that command then starts
    // from dist/src (slower, same behaviour) instead of failing the build.
    process.stderr.write(`bundle: ${t.name} not bundled, it will start unbundled: ${String(err.message).split('\n')[0]}\n`);
    rmSync(outfile, { force: true });
    continue;
  }
  let hasJit = false;
  for (const input of Object.keys(result.metafile.inputs)) {
    const abs = resolve(root, input);
    if (abs.startsWith(`${dist}/`) && !input.endsWith("-entry.js")) inputs.add(abs);
    if (abs === join(dist, 'src', 'vm', 'jit.js')) hasJit = true;
  }
  const st = statSync(outfile);
  bundles[t.name] = { file: `${t.name}.cjs`, size: st.size, mtimeMs: st.mtimeMs, sha256: sha256(readFileSync(outfile)) };
  // The flags the JIT sets at run time, which the launcher sets before it compiles a bundle
  // that holds it (see JIT_V8_FLAGS in src/vm/jit.ts).
  if (hasJit) bundles[t.name].v8Flags = JIT_V8_FLAGS;
}

const commands = Object.fromEntries(Object.entries(commandFiles).map(([name, f]) => [name, f.replace(/\.js$/, '')]));
const manifest = {
  commands,
  all: 'all',
  bundles,
  inputs: [...inputs].sort().map((abs) => {
    const st = statSync(abs);
    return { path: relative(dist, abs), size: st.size, mtimeMs: st.mtimeMs, sha256: sha256(readFileSync(abs)) };
  }),
};
writeFileSync(join(outDir, 'manifest.json'), JSON.stringify(manifest, null, 1) + '\n');
process.stdout.write(`bundle: ${Object.keys(bundles).length} of ${targets.length} bundles from ${manifest.inputs.length} dist files in ${relative(root, outDir)}/\n`);
