/**
 * Terminal injection: user text (rule text, names, namespace and interface names, file names)
 * reaches the terminal escaped, never as ESC, OSC, CSI, CR or other controls. The escaping
 * function, the caret line of a rule error, and the CLI's outputs: errors, replay's summary,
 * status (text and JSON), and a root run on an interface and namespace named with escapes.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { isPrintable, printable, printableJson } from '../../src/printable.js';
import { renderRuleError } from '../../src/rules/errors.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');
const capture = join(dirname(bin), '..', 'test', 'fixtures', 'pcap', 'tcpdump-ns.pcap');

/** Any byte or character a terminal acts on: C0 but newline, DEL, C1, bidi controls. */
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;
const OSC_TITLE = '\x1b]0;pwned\x07';
const CSI_RED = '\x1b[31m';
const C1_CSI = '\u009b2J';

test('printable escapes C0, DEL, C1 and bidi controls and lone surrogates, keeps the rest, and is idempotent', () => {
  assert.equal(printable(`a${OSC_TITLE}b`), 'a\\x1b]0;pwned\\x07b');
  assert.equal(printable('x\ry\n\tz\x7f'), 'x\\x0dy\\x0a\\x09z\\x7f');
  assert.equal(printable(C1_CSI), '\\u009b2J');
  assert.equal(printable('\u202eevil'), '\\u202eevil');
  assert.equal(printable('\ud800'), '\\ud800');
  assert.equal(printable('tête 🙂 ip.ttl == 1'), 'tête 🙂 ip.ttl == 1');
  assert.equal(printable('two\nlines\x1b', { multiline: true }), 'two\nlines\\x1b');
  const once = printable(`${OSC_TITLE}${CSI_RED}${C1_CSI}\r`);
  assert.equal(printable(once), once);
  assert.ok(isPrintable(once) && !isPrintable(OSC_TITLE));
});

test('printableJson: the same JSON to a parser, no control characters', () => {
  const value = { name: `n${C1_CSI}\x7f${OSC_TITLE}`, list: [1, 2] };
  const text = printableJson(JSON.stringify(value, null, 2));
  assert.doesNotMatch(text, CONTROL);
  assert.deepEqual(JSON.parse(text), value);
});

test('a rule error shows control characters escaped, with the caret under the escaped text', () => {
  const source = `ip.ttl == 1${OSC_TITLE} => drop`;
  const at = source.indexOf('\x1b');
  const text = renderRuleError('unexpected character "\x1b"', source, { start: at, end: at + 1 }, `rules${CSI_RED}.yaml:3`);
  assert.doesNotMatch(text, CONTROL);
  const [head, line, caret] = text.split('\n');
  assert.equal(head, 'rules\\x1b[31m.yaml:3: unexpected character "\\x1b"');
  assert.equal(line, '  ip.ttl == 1\\x1b]0;pwned\\x07 => drop');
  assert.equal(caret, `  ${' '.repeat('ip.ttl == 1'.length)}^^^^`);
});

function cli(args: string[], env: NodeJS.ProcessEnv = process.env) {
  return spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env });
}

test('CLI errors quoting rule text, names and file names print no control characters (one-line rule, rules file, file name)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-esc-'));
  try {
    const file = join(dir, `r${CSI_RED}.yaml`);
    const cases: string[][] = [
      ['replay', `ip.ttl == 1${OSC_TITLE} => drop`, '--hook', 'egress', capture, '-o', join(dir, 'o.pcap')],
      ['replay', `ip.ttl == 1 => drop`, '--hook', 'egress', '--name', `n${OSC_TITLE}`, capture, '-o', join(dir, 'o.pcap')],
      ['replay', `ip.tt\r${C1_CSI} == 1 => drop`, '--hook', 'egress', capture, '-o', join(dir, 'o.pcap')],
      ['replay', file, capture, '-o', join(dir, 'o.pcap')],
      ['replay', join(dir, `missing${OSC_TITLE}.yaml`), capture, '-o', join(dir, 'o.pcap')],
    ];
    writeFileSync(file, [
      'rules:',
      '  - name: ok-name',
      `    dev: "e\\e[31mth0"`,
      '    hook: egress',
      `    rule: "ip.ttl == 1 and ip.tll\\e]0;x\\a == 2 => drop"`,
      '',
    ].join('\n'));
    for (const args of cases) {
      const r = cli(args);
      assert.equal(r.status, 2, `${JSON.stringify(args)}: ${r.stderr}`);
      assert.match(r.stderr, /^netmangle: /);
      assert.doesNotMatch(r.stderr, CONTROL, JSON.stringify(r.stderr));
      assert.match(r.stderr, /\\x1b|\\u001b|\\u009b|\\x0d/, `the control character is shown escaped: ${JSON.stringify(r.stderr)}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('status (text and JSON) shows a record\'s names and rule text escaped', () => {
  // A record as a run writes it, with this (live) process as its owner.
  mkdirSync('/run/netmangle/runs', { recursive: true });
  const file = `/run/netmangle/runs/${process.pid}.97.json`;
  const evil = { dev: `e${CSI_RED}0`, hook: 'egress', netns: `ns${OSC_TITLE}`, path: 'tcx', progId: 0, stateMapId: 0, seed: 1,
    rules: [{ name: `r${C1_CSI}`, text: `ip${OSC_TITLE}\r => drop` }], since: '2026-01-01T00:00:00.000Z', pid: process.pid };
  writeFileSync(file, JSON.stringify(evil));
  try {
    const text = cli(['status']);
    assert.equal(text.status, 0, text.stderr);
    const ours = text.stdout.split('\n').filter((l) => l.includes('pwned') || l.includes('\\x1b[31m0') || l.includes('r\\u009b'));
    assert.ok(ours.length >= 2, text.stdout);
    assert.doesNotMatch(text.stdout, CONTROL, JSON.stringify(text.stdout));
    const json = cli(['status', '--json']);
    assert.equal(json.status, 0, json.stderr);
    assert.doesNotMatch(json.stdout, CONTROL);
    const entry = (JSON.parse(json.stdout) as Array<typeof evil>).find((e) => e.pid === process.pid && e.netns === evil.netns);
    assert.deepEqual(entry?.rules, evil.rules, 'JSON keeps the exact strings');
  } finally {
    rmSync(file, { force: true });
  }
});

kernelTest('run on an interface and namespace named with escapes: attach line, summary and status print no control characters', async () => {
  const ns = `${uniqueName('esc')}${'\x1b]0;'}`;
  const dev = `v${CSI_RED}`;
  const ip = (...args: string[]) => {
    const r = spawnSync('ip', args, { encoding: 'utf8' });
    assert.equal(r.status, 0, `ip ${args.join(' ')}: ${r.stderr}`);
  };
  ip('netns', 'add', ns);
  try {
    ip('-n', ns, 'link', 'add', dev, 'type', 'veth', 'peer', 'p0');
    ip('-n', ns, 'link', 'set', dev, 'up');
    const child = spawn(process.execPath, [bin, 'run', '--netns', ns, '--dev', dev, '--hook', 'egress', 'ip => set ip.ttl = 9', '--name', 'ttl', '--seed', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const exit = new Promise<number | null>((resolve) => child.on('close', resolve));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d) => {
        out += d;
        if (/^attached/m.test(out)) resolve();
      });
      void exit.then((code) => reject(new Error(`run exited ${code}: ${err}`)));
    });
    const status = cli(['status']);
    child.kill('SIGINT');
    assert.equal(await exit, 0, err);
    for (const text of [out, err, status.stdout]) assert.doesNotMatch(text, CONTROL, JSON.stringify(text));
    assert.match(out, /^attached 1 rule to v\\x1b\[31m egress \(netns esc.*\\x1b\]0;\)/m);
    assert.match(status.stdout, /v\\x1b\[31m egress/);
    // On a terminal (script gives it one), the live table's only escapes are its own redraws.
    const quote = (t: string) => `'${t.replace(/'/g, `'\\''`)}'`;
    const command = [process.execPath, bin, 'run', '--netns', ns, '--dev', dev, '--hook', 'egress', 'ip => set ip.ttl = 9', '--name', 'ttl', '--seed', '1', '--for', '2500ms'].map(quote).join(' ');
    const tty = spawnSync('script', ['-qfec', command, '/dev/null'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(tty.status, 0, tty.stdout);
    assert.match(tty.stdout, /ttl +v\\x1b\[31m\/egress/, 'the table shows the escaped names');
    const ours = tty.stdout.replace(/\x1b\[\d+A\x1b\[J/g, '').replace(/\r\n/g, '\n');
    assert.doesNotMatch(ours, CONTROL, JSON.stringify(ours));
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
  }
});
