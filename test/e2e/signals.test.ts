/**
 * SIGUSR1 never opens the Node inspector of a netmangle process (it would let anyone who can
 * reach 127.0.0.1:9229 run code as root): a root `run` in a namespace, with and without a
 * delay line (a worker thread), `lab exec`, and `replay` blocked on its input. Each gets
 * SIGUSR1 (from kill and from process._debugProcess) and must listen on no TCP port and go on
 * as usual. A plain node process shows that the check would see the inspector if it opened.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, constants as fsConstants, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { pcapGlobalHeader, pcapRecord } from '../helpers/pcap.js';
import { Lab } from '../../src/lab/lab.js';
import { ping } from '../../src/lab/measure.js';
import { NETMANGLE_NODE_ARGS } from '../../src/lab/experiments.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** TCP ports `pid` listens on: its socket fds matched against the LISTEN sockets of its namespace. */
function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // closed meanwhile
    }
  }
  const ports: number[] = [];
  for (const table of ['tcp', 'tcp6']) {
    for (const line of readFileSync(`/proc/${pid}/net/${table}`, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // local_address rem_address st ... inode (field 9)
      if (f.length > 9 && f[3] === '0A' && inodes.has(f[9]!)) ports.push(parseInt(f[1]!.split(':')[1]!, 16));
    }
  }
  return ports;
}

interface Started {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  exit: Promise<number | null>;
}

function start(argv: string[], opts: { waitFor?: RegExp; direct?: boolean } = {}): Promise<Started> {
  // direct: executed as a program, through the shebang (its node options); else `node bin/netmangle`.
  const child = opts.direct ? spawn(bin, argv, { stdio: ['pipe', 'pipe', 'pipe'] }) : spawn(process.execPath, [bin, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const s = { child, out: () => out, err: () => err, exit };
  if (!opts.waitFor) return Promise.resolve(s);
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (opts.waitFor!.test(out)) {
        clearInterval(timer);
        resolve(s);
      }
    }, 20);
    void exit.then((code) => {
      clearInterval(timer);
      reject(new Error(`exited ${code} before ${opts.waitFor}: ${err || out}`));
    });
  });
}

/** Sends SIGUSR1 both ways, gives an inspector time to open, and checks none did. */
async function signalAndCheck(s: Started): Promise<void> {
  const pid = s.child.pid!;
  s.child.kill('SIGUSR1');
  await sleep(300);
  (process as unknown as { _debugProcess(pid: number): void })._debugProcess(pid);
  await sleep(700);
  assert.equal(s.child.exitCode, null, `SIGUSR1 ended the process: ${s.err()}`);
  assert.deepEqual(listeningPorts(pid), [], 'a TCP port is open after SIGUSR1');
  assert.doesNotMatch(s.err(), /Debugger listening|inspector/i, s.err());
}

test('control: SIGUSR1 does open the inspector of a plain node process, and listeningPorts sees it', async () => {
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 20000)'], { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    await sleep(300);
    child.kill('SIGUSR1');
    let ports: number[] = [];
    for (let i = 0; i < 50 && ports.length === 0; i++) {
      await sleep(100);
      ports = listeningPorts(child.pid!);
    }
    assert.ok(ports.length > 0, 'no inspector port after SIGUSR1: the check below proves nothing');
  } finally {
    child.kill('SIGKILL');
  }
});

for (const direct of [false, true]) {
  const how = direct ? 'started through its shebang' : 'started as node bin/netmangle';
  for (const rule of ['icmp.type == 8 => set ip.ttl = 9', 'icmp.type == 8 => delay 5ms']) {
    kernelTest(`SIGUSR1 to a root run (${rule.split('=> ')[1]}, ${how}): no inspector, the run goes on and detaches as usual`, async () => {
      await using lab = await Lab.up(undefined, { name: uniqueName('usr1') });
      const s = await start(['run', '--netns', lab.netns('h1'), '--dev', 'eth0', '--hook', 'egress', rule, '--seed', '1'], { waitFor: /^attached/m, direct });
      try {
        await signalAndCheck(s);
        const p = await ping(lab, 'h1', 'h2', { count: 3 });
        assert.equal(p.received, 3, p.output);
      } finally {
        s.child.kill('SIGINT');
      }
      assert.equal(await s.exit, 0, s.err());
      assert.match(s.out(), /detached \(SIGINT\)/);
      assert.match(s.out(), /matched=3 acted=3/);
    });
  }
}

kernelTest('SIGUSR1 to lab exec: no inspector, the command runs to its end', async () => {
  await using lab = await Lab.up(undefined, { name: uniqueName('usr1') });
  const s = await start(['lab', 'exec', '--name', lab.name, 'h1', '--', 'sh', '-c', 'sleep 2; echo done']);
  await sleep(400);
  await signalAndCheck(s);
  assert.equal(await s.exit, 0, s.err());
  assert.match(s.out(), /^done$/m);
});

test('SIGUSR1 to replay (waiting for its input): no inspector, the replay completes', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-usr1-'));
  try {
    const fifo = join(dir, 'in.pcap');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const s = await start(['replay', 'frame => drop', '--hook', 'egress', fifo, '-o', join(dir, 'out.pcap'), '--seed', '1']);
    // Opened on the thread pool: it returns once replay opens the FIFO for reading.
    const opened = open(fifo, 'w');
    const early = await Promise.race([opened.then(() => undefined), s.exit.then((code) => `replay exited ${code} before reading: ${s.err()}`)]);
    if (early) {
      closeSync(openSync(fifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK)); // lets the pending open return
      assert.fail(early);
    }
    const fh = await opened;
    try {
      await fh.write(pcapGlobalHeader());
      await signalAndCheck(s);
      await fh.write(pcapRecord(Buffer.alloc(60)));
    } finally {
      await fh.close();
    }
    assert.equal(await s.exit, 0, s.err());
    assert.match(s.out(), /^1 packets in, 0 out \(0 changed\), 1 dropped/m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('NODE_OPTIONS asking for the inspector is refused with one line and exit 2', () => {
  for (const opt of ['--inspect', '--inspect=127.0.0.1:0', '--inspect-wait=0', '--max-old-space-size=200 --inspect-brk=0']) {
    const r = spawnSync(bin, ['status', '--json'], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: opt } });
    assert.equal(r.status, 2, `${opt}: ${r.stderr}`);
    assert.match(r.stderr, /^netmangle: refusing to start: the Node inspector is asked for in NODE_OPTIONS/m, opt);
    assert.doesNotMatch(r.stderr, /Debugger listening/, opt);
  }
  // Options that open nothing still work.
  const ok = spawnSync(bin, ['--version'], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '--max-old-space-size=200 --inspect-port=9333' } });
  assert.equal(ok.status, 0, ok.stderr);
});

test("the lab's experiments start netmangle with the shebang's own node options", () => {
  const shebang = readFileSync(bin, 'utf8').split('\n', 1)[0]!;
  assert.ok(shebang.endsWith(` node ${NETMANGLE_NODE_ARGS.join(' ')}`), shebang);
});
