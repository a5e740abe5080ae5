#!/usr/bin/env node
// The kernel matrix's test driver, used on the host and inside the guest.
//   tests.mjs run OUT.json LOGDIR FILTER…   runs each dist/test/**/*.test.js whose path contains a
//                                          filter, one node --test process per file (TAP reporter),
//                                          and writes per-file counts and failing test names.
//   tests.mjs table HOST.json GUEST.json OUTDIR
//                                          prints the file × kernel table, writes it as
//                                          OUTDIR/kernel-matrix.md and .json; exits 1 if the guest
//                                          has no results or any guest test failed.
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { release } from 'node:os';
import { testFiles } from '../test-files.mjs';

/** Counts from the TAP summary node prints at the end, and the names of failed and skipped tests. */
export function parseTap(text) {
  const counts = { tests: 0, pass: 0, fail: 0, skipped: 0, todo: 0, cancelled: 0 };
  for (const m of text.matchAll(/^# (tests|pass|fail|skipped|todo|cancelled) (\d+)$/gm)) counts[m[1]] = Number(m[2]);
  const failed = [];
  const skipped = [];
  // Top-level tests only (no indentation): a failed subtest also fails its parent.
  for (const m of text.matchAll(/^(not ok|ok) \d+ - (.*?)(?: # (SKIP|TODO)\b ?(.*))?$/gm)) {
    if (m[3] === 'SKIP') skipped.push({ name: m[2], reason: m[4] ?? '' });
    else if (m[1] === 'not ok' && m[3] !== 'TODO') failed.push(m[2]);
  }
  return { counts, failed, skipped };
}

function run(outPath, logDir, filters) {
  const files = testFiles(filters);
  if (files.length === 0) {
    console.error('tests.mjs: no test files matched');
    process.exit(2);
  }
  mkdirSync(logDir, { recursive: true });
  const fileTimeout = Number(process.env.NETMANGLE_MATRIX_FILE_TIMEOUT ?? 900);
  const started = Date.now();
  // Written after every file, so a guest stopped by its timeout still leaves what it ran.
  const result = { kernel: release(), ci: process.env.CI ?? '', slow: process.env.NETMANGLE_SLOW ?? '', complete: false, seconds: 0, files: {} };
  for (const file of files) {
    const t0 = Date.now();
    const name = file.replace(/^dist\//, '').replace(/\.js$/, '.ts');
    // The TAP goes straight to the log file, so a hung test can be watched from outside.
    const logPath = join(logDir, name.replaceAll('/', '_') + '.tap');
    const fd = openSync(logPath, 'w');
    // A file that hangs (a blocked syscall stops node's own test timeouts) is killed after
    // NETMANGLE_MATRIX_FILE_TIMEOUT seconds, so the others still run.
    const r = spawnSync(process.execPath, ['--test', '--test-reporter=tap', file], { stdio: ['ignore', fd, fd], timeout: fileTimeout * 1000, killSignal: 'SIGKILL' });
    closeSync(fd);
    const seconds = (Date.now() - t0) / 1000;
    const parsed = parseTap(readFileSync(logPath, 'utf8'));
    const exit = r.status ?? (r.signal ? `killed by ${r.signal}${seconds >= fileTimeout ? ` after the ${fileTimeout} s file timeout` : ''}` : 'unknown');
    result.files[name] = { ...parsed, exit, seconds };
    const c = parsed.counts;
    console.log(`${c.fail === 0 && exit === 0 ? 'ok  ' : 'FAIL'} ${name}: ${c.pass} pass, ${c.fail} fail, ${c.skipped} skip (${seconds.toFixed(1)} s)`);
    for (const f of parsed.failed) console.log(`       failed: ${f}`);
    result.seconds = (Date.now() - started) / 1000;
    writeFileSync(outPath, JSON.stringify(result, null, 2));
  }
  result.complete = true;
  writeFileSync(outPath, JSON.stringify(result, null, 2));
  console.log(`tests.mjs: ${files.length} files in ${result.seconds.toFixed(0)} s on ${result.kernel}`);
}

function readResult(path) {
  if (!path || !existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch {
    return undefined;
  }
}

function cell(entry) {
  if (!entry) return 'not run';
  const c = entry.counts;
  const parts = [`${c.pass} pass`];
  if (c.fail) parts.push(`${c.fail} fail`);
  if (c.skipped) parts.push(`${c.skipped} skip`);
  if (c.cancelled) parts.push(`${c.cancelled} cancelled`);
  const bad = c.fail > 0 || entry.exit !== 0;
  return `${bad ? 'FAIL' : 'ok'}: ${parts.join(', ')}${bad && c.fail === 0 ? ` (exit ${entry.exit})` : ''}`;
}

function table(hostPath, guestPath, outDir) {
  const host = readResult(hostPath);
  const guest = readResult(guestPath);
  const files = [...new Set([...Object.keys(host?.files ?? {}), ...Object.keys(guest?.files ?? {})])].sort();
  const hostHead = host ? `host ${host.kernel}` : 'host (not run)';
  const guestHead = guest ? `guest ${guest.kernel}` : 'guest (no results)';
  const rows = files.map((f) => [f, cell(host?.files[f]), cell(guest?.files[f])]);
  const widths = [0, 1, 2].map((i) => Math.max([ 'test file', hostHead, guestHead ][i].length, ...rows.map((r) => r[i].length)));
  const line = (r) => `| ${r.map((v, i) => v.padEnd(widths[i])).join(' | ')} |`;
  const md = [
    line(['test file', hostHead, guestHead]),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
    ...rows.map(line),
  ];
  const notes = [];
  for (const [label, r] of [['host', host], ['guest', guest]]) {
    if (!r) continue;
    notes.push(`${label} ${r.kernel}: ${Object.keys(r.files).length} files in ${Math.round(r.seconds)} s${r.complete ? '' : ' (INCOMPLETE: stopped before the last file)'} (CI=${r.ci || 'unset'}, NETMANGLE_SLOW=${r.slow || 'unset'})`);
    for (const [f, e] of Object.entries(r.files)) {
      for (const name of e.failed) notes.push(`  ${label} failed: ${f}: ${name}`);
      for (const s of e.skipped) notes.push(`  ${label} skipped: ${f}: ${s.name} (${s.reason})`);
    }
  }
  const text = [...md, '', ...notes].join('\n');
  console.log(text);
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'kernel-matrix.md'), `# Kernel matrix\n\n${text}\n`);
  writeFileSync(join(outDir, 'kernel-matrix.json'), JSON.stringify({ host: host ?? null, guest: guest ?? null }, null, 2));
  const guestFailed = !guest || !guest.complete || files.length === 0 || Object.values(guest.files).some((e) => e.counts.fail > 0 || e.exit !== 0);
  process.exit(guestFailed ? 1 : 0);
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'run' && args.length >= 3) run(args[0], args[1], args.slice(2));
else if (cmd === 'table' && args.length === 3) table(args[0], args[1], args[2]);
else {
  console.error('usage: tests.mjs run OUT.json LOGDIR FILTER… | tests.mjs table HOST.json GUEST.json OUTDIR');
  process.exit(2);
}
