/**
 * Objects against the kernel and the standard tools: what `netmangle build` writes loads with
 * iproute2 and bpftool and behaves like `netmangle run`; what clang writes loads with
 * `netmangle load`.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileGroup, readCounters } from '../../src/compiler/index.js';
import { buildObjectFromGroups } from '../../src/elf/build.js';
import { loadObjectProgram } from '../../src/elf/load.js';
import { parseObject } from '../../src/elf/object.js';
import { openPinnedProgram, testRun, type Program } from '../../src/kernel/index.js';
import { loadCompiled } from '../../src/live/index.js';
import { lookupField } from '../../src/rules/catalog.js';
import { parseRuleLine } from '../../src/rules/load.js';
import { onCpu } from '../compiler/harness.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { FEATURES_C } from './fixtures.js';
import { icmpEchoReply, ipv4ChecksumOk, tcpSegment } from './packets.js';
import { compileC, run } from './tools.js';

const NETMANGLE = fileURLToPath(new URL('../../../bin/netmangle', import.meta.url));
const ANCHORS = '/work/shared/anchors';
const TTL_RULE = 'icmp.type == 0 and ip.ttl > 0 => set ip.ttl = random(1, ip.ttl)';
const PSH_RULE = 'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1';

const groupsOf = (rule: string, hook: string, probability?: number) => parseRuleLine(rule, { dev: 'v0', hook, probability }).groups;

function withDir<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'nm-elfk-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A namespace holding a veth pair v0 <-> v1, both up; removed when fn ends. */
async function withVethNs<T>(fn: (ns: string) => Promise<T> | T): Promise<T> {
  const ns = uniqueName('nmel');
  run('ip', ['netns', 'add', ns]);
  try {
    run('ip', ['-n', ns, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1']);
    run('ip', ['-n', ns, 'link', 'set', 'v0', 'up']);
    run('ip', ['-n', ns, 'link', 'set', 'v1', 'up']);
    return await fn(ns);
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
  }
}

kernelTest('objects from netmangle build load and attach with ip link (xdp), tc (bpf da) and bpftool', async () => {
  await withVethNs((ns) => withDir((dir) => {
    const xdp = join(dir, 'ttl.o');
    writeFileSync(xdp, buildObjectFromGroups(groupsOf(TTL_RULE, 'xdp'), 11).bytes);
    const tc = join(dir, 'psh.o');
    writeFileSync(tc, buildObjectFromGroups(groupsOf(PSH_RULE, 'egress', 0.1), 11).bytes);
    const tcx = join(dir, 'psh-tcx.o');
    writeFileSync(tcx, buildObjectFromGroups(groupsOf(PSH_RULE, 'ingress'), 11, { sections: 'tcx' }).bytes);

    run('ip', ['-n', ns, 'link', 'set', 'dev', 'v0', 'xdp', 'object', xdp, 'section', 'xdp']);
    assert.match(run('ip', ['-n', ns, 'link', 'show', 'dev', 'v0']).stdout, /prog\/xdp id \d+ name nm_xdp/);

    run('tc', ['-n', ns, 'qdisc', 'add', 'dev', 'v0', 'clsact']);
    run('tc', ['-n', ns, 'filter', 'add', 'dev', 'v0', 'egress', 'bpf', 'da', 'obj', tc, 'sec', 'tc']);
    assert.match(run('tc', ['-n', ns, 'filter', 'show', 'dev', 'v0', 'egress']).stdout, /psh\.o:\[tc\] direct-action.* name nm_egress/);
    run('tc', ['-n', ns, 'filter', 'add', 'dev', 'v0', 'ingress', 'bpf', 'da', 'obj', tcx, 'sec', 'tcx/ingress']);
    assert.match(run('tc', ['-n', ns, 'filter', 'show', 'dev', 'v0', 'ingress']).stdout, /name nm_ingress/);

    const pin = `/sys/fs/bpf/${uniqueName('nmelpin')}`;
    try {
      run('bpftool', ['prog', 'load', xdp, pin]);
      const shown = run('bpftool', ['prog', 'show', 'pinned', pin]).stdout;
      assert.match(shown, /xdp\s+name nm_xdp/);
      assert.match(shown, /map_ids \d+,\d+/, 'nm_state and the .rodata seed map');
    } finally {
      rmSync(pin, { force: true });
    }
  }));
});

/** Same packets through both programs, on one CPU: same verdicts and bytes. */
function sameBehaviour(a: Program, b: Program, packets: Uint8Array[]): Array<{ retval: number; data: Uint8Array }> {
  return onCpu(0, () => packets.map((p, i) => {
    const ra = testRun(a, { data: p });
    const rb = testRun(b, { data: p });
    assert.equal(rb.retval, ra.retval, `packet ${i}: verdict`);
    assert.deepEqual(rb.data, ra.data, `packet ${i}: bytes`);
    return ra;
  }));
}

kernelTest('a built object loaded by bpftool behaves like netmangle run: same bytes, same random draws (seed in .rodata)', () => {
  withDir((dir) => {
    for (const [rule, hook, probability, make] of [
      [TTL_RULE, 'xdp', undefined, (i: number) => icmpEchoReply(64, i)],
      [PSH_RULE, 'egress', 0.3, () => tcpSegment(0x10)],
    ] as const) {
      const seed = 4242;
      const groups = groupsOf(rule, hook, probability);
      const file = join(dir, `${hook}.o`);
      writeFileSync(file, buildObjectFromGroups(groups, seed).bytes);
      const pin = `/sys/fs/bpf/${uniqueName('nmelpin')}`;
      run('bpftool', ['prog', 'load', file, pin]);
      try {
        using fromTool = openPinnedProgram(pin);
        using live = loadCompiled(compileGroup(groups[0]!, { seed, lookupField }));
        using live2 = loadCompiled(compileGroup(groups[0]!, { seed, lookupField }));
        using ours = loadObjectProgram(parseObject(new Uint8Array(readFileSync(file)), file), `nm_${hook}`);
        const packets = Array.from({ length: 200 }, (_, i) => make(i));
        const out = sameBehaviour(live.prog, fromTool, packets);
        sameBehaviour(live2.prog, ours.prog, packets.slice(0, 50));
        if (hook === 'xdp') {
          const ttls = new Set(out.map((r) => r.data[22]!));
          assert.ok(ttls.size > 20, `random TTLs (${ttls.size} distinct)`);
          assert.ok([...ttls].every((t) => t >= 1 && t <= 64));
          assert.ok(out.every((r) => ipv4ChecksumOk(r.data)));
        } else {
          const psh = out.filter((r) => (r.data[47]! & 0x08) !== 0).length;
          assert.ok(psh > 30 && psh < 90, `PSH on about 30% of 200 segments (${psh})`);
        }
        // netmangle's loader keeps the object's state map, which counts like run's.
        const counters = readCounters(1, ours.maps['nm_state']!.perCpuValues(Buffer.alloc(4))!);
        assert.equal(counters.rules[0]!.matched, 50);
      } finally {
        rmSync(pin, { force: true });
      }
    }
  });
});

kernelTest('a clang object with BTF maps, global data and bpf-to-bpf calls runs under netmangle load', () => {
  const o = compileC(FEATURES_C, 'features');
  try {
    const obj = parseObject(new Uint8Array(readFileSync(o.path)), o.path);
    using xdp = loadObjectProgram(obj, 'features_xdp');
    const key = Buffer.alloc(4);
    for (let n = 1; n <= 3; n++) {
      const r = onCpu(0, () => testRun(xdp.prog, { data: new Uint8Array(60) }));
      assert.equal(r.retval, 2, 'returns verdict from .rodata (XDP_PASS)');
      assert.equal(xdp.maps['counts']!.lookup(key)!.readBigUint64LE(0), BigInt(n), 'hash map counted');
      assert.equal(xdp.maps['.bss']!.lookup(key)!.readBigUint64LE(0), BigInt(n), '.bss global counted');
    }
    assert.equal(xdp.maps['last_len']!.lookup(key)!.readBigUint64LE(0), 127n, 'scaled(60) = 60 * 2 + bonus (7, from .data)');
    assert.equal(xdp.maps['bytes_seen']!.perCpuValues(key)![0]!.readBigUint64LE(0), 180n, 'per-CPU array on CPU 0');
    assert.equal(xdp.maps['recent']!.lookup(key)!.readUInt32LE(0), 1, 'LRU hash written');
    assert.ok(xdp.maps['per_flow']!.lookup(key), 'LRU per-CPU hash written');
    assert.throws(() => xdp.maps['.rodata']!.update(key, Buffer.from([1, 0, 0, 0])), /EPERM|frozen|not permitted/i, '.rodata is frozen');
    using tc = loadObjectProgram(obj, 'features_tc');
    assert.equal(testRun(tc.prog, { data: new Uint8Array(60) }).retval, 0);
  } finally {
    o.cleanup();
  }
});

kernelTest('the article\'s programs, built with clang, do what the article shows under netmangle load (test_run)', () => {
  withDir((dir) => {
    for (const name of ['xdp_ttl_pong', 'tc_psh_egress']) {
      run('clang', ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu`, '-c', join(ANCHORS, `${name}.c`), '-o', join(dir, `${name}.o`)]);
    }
    const pong = parseObject(new Uint8Array(readFileSync(join(dir, 'xdp_ttl_pong.o'))));
    using xdp = loadObjectProgram(pong, 'xdp_ttl_pong');
    const ttls = new Set<number>();
    for (let i = 0; i < 300; i++) {
      const r = testRun(xdp.prog, { data: icmpEchoReply(64, i) });
      assert.equal(r.retval, 2);
      assert.ok(ipv4ChecksumOk(r.data), 'IPv4 checksum fixed');
      ttls.add(r.data[22]!);
    }
    assert.ok(ttls.size > 30 && [...ttls].every((t) => t >= 1 && t <= 64), `TTL random in 1..64 (${ttls.size} values)`);
    const request = icmpEchoReply(64, 1);
    request[34] = 8; // an echo request is left alone
    assert.deepEqual(testRun(xdp.prog, { data: request }).data, request);

    const psh = parseObject(new Uint8Array(readFileSync(join(dir, 'tc_psh_egress.o'))));
    using tc = loadObjectProgram(psh, 'tc_psh_egress');
    let set = 0;
    for (let i = 0; i < 2000; i++) if ((testRun(tc.prog, { data: tcpSegment(0x10) }).data[47]! & 0x08) !== 0) set++;
    assert.ok(set > 120 && set < 300, `PSH on about 1 in 10 of 2000 ACKs (${set})`);
    const syn = tcpSegment(0x02);
    assert.deepEqual(testRun(tc.prog, { data: syn }).data, syn, 'SYN untouched');
  });
});

/** Waits for a line matching `re` on the child's stdout. */
function waitForLine(child: ReturnType<typeof spawn>, re: RegExp, ms: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`no line matching ${re} within ${ms} ms; stdout: ${buf} stderr: ${err}`)), ms);
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const line = buf.split('\n').find((l) => re.test(l));
      if (line) {
        clearTimeout(timer);
        resolve(line);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (!re.test(buf)) reject(new Error(`netmangle exited (${code}) before ${re}: ${buf} ${err}`));
    });
  });
}

kernelTest('netmangle load attaches the clang-built xdp_ttl_pong in a lab: ping replies arrive with random TTLs; detached on SIGINT', async () => {
  const a = uniqueName('nmelA');
  const b = uniqueName('nmelB');
  const dir = mkdtempSync(join(tmpdir(), 'nm-elfk-'));
  let child: ReturnType<typeof spawn> | undefined;
  try {
    run('ip', ['netns', 'add', a]);
    run('ip', ['netns', 'add', b]);
    run('ip', ['-n', a, 'link', 'add', 'va', 'type', 'veth', 'peer', 'name', 'vb', 'netns', b]);
    run('ip', ['-n', a, 'addr', 'add', '198.18.77.1/24', 'dev', 'va']);
    run('ip', ['-n', b, 'addr', 'add', '198.18.77.2/24', 'dev', 'vb']);
    run('ip', ['-n', a, 'link', 'set', 'va', 'up']);
    run('ip', ['-n', b, 'link', 'set', 'vb', 'up']);
    const obj = join(dir, 'xdp_ttl_pong.o');
    run('clang', ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu`, '-c', join(ANCHORS, 'xdp_ttl_pong.c'), '-o', obj]);
    const ttlsOf = () => {
      const out = run('ip', ['netns', 'exec', a, 'ping', '-c', '30', '-i', '0.01', '-W', '1', '198.18.77.2'], { allowFail: true }).stdout;
      return [...out.matchAll(/ttl=(\d+)/g)].map((m) => Number(m[1]));
    };
    assert.deepEqual(new Set(ttlsOf()), new Set([64]), 'before: every reply has TTL 64');

    child = spawn(NETMANGLE, ['load', obj, '--dev', 'va', '--hook', 'xdp', '--netns', a], { stdio: ['ignore', 'pipe', 'pipe'] });
    const line = await waitForLine(child, /^attached /, 20_000);
    assert.match(line, /attached xdp_ttl_pong \(section xdp\) from .* to va xdp \(netns .*\) via link, program id \d+/);
    const ttls = ttlsOf();
    assert.ok(ttls.length >= 25, `replies arrive (${ttls.length})`);
    assert.ok(new Set(ttls).size >= 5 && ttls.every((t) => t >= 1 && t <= 64), `random TTLs: ${ttls.join(' ')}`);

    const exited = new Promise<number | null>((resolve) => child!.on('exit', resolve));
    const detached = waitForLine(child, /^detached \(SIGINT\)/, 10_000);
    child.kill('SIGINT');
    await detached;
    assert.equal(await exited, 0);
    child = undefined;
    assert.doesNotMatch(run('ip', ['-n', a, 'link', 'show', 'dev', 'va']).stdout, /prog\/xdp/, 'detached on exit');
    assert.deepEqual(new Set(ttlsOf()), new Set([64]), 'after: TTL 64 again');
  } finally {
    child?.kill('SIGKILL');
    spawnSync('ip', ['netns', 'del', a]);
    spawnSync('ip', ['netns', 'del', b]);
    rmSync(dir, { recursive: true, force: true });
  }
});
