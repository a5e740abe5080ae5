import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rmSync, unlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import {
  BpfError, createMap, createTcxLink, createXdpLink, detachLink, linkInfo, listLinks, loadProgram, openPinnedLink, pinDir,
  programFdById, queryProgs, closeFd, updateLink,
} from '../../src/kernel/index.js';
import { inNetns } from '../../src/kernel/netns.js';
import { kernelTest } from '../helpers/kernel.js';
import { TC_ACT_OK, XDP_PASS, countingProgram, createVethLab, hasXdp, u32Key } from './bpf-fixtures.js';

function counterMap(name: string) {
  return createMap({ type: 'array', keySize: 4, valueSize: 8, maxEntries: 1, name });
}

const count = (m: ReturnType<typeof counterMap>): bigint => m.lookup(u32Key(0))!.readBigUInt64LE(0);

kernelTest('an XDP link and a tcx link count real traffic on a veth pair; closing them detaches', () => {
  const lab = createVethLab();
  try {
    using xdpCounts = counterMap('nm_xdp_cnt');
    using tcCounts = counterMap('nm_tc_cnt');
    const xdpCode = countingProgram(XDP_PASS);
    const tcCode = countingProgram(TC_ACT_OK);
    using xdpProg = loadProgram({ type: 'xdp', insns: xdpCode.insns, mapRefs: xdpCode.mapRefs, maps: { counts: xdpCounts }, name: 'nm_xdp_count' });
    using tcProg = loadProgram({ type: 'sched_cls', insns: tcCode.insns, mapRefs: tcCode.mapRefs, maps: { counts: tcCounts }, name: 'nm_tc_count' });

    const xdpLink = inNetns(lab.nsB, () => createXdpLink(xdpProg, lab.ifindexB));
    const tcLink = inNetns(lab.nsA, () => createTcxLink(tcProg, lab.ifindexA, 'egress'));
    try {
      assert.equal(xdpLink.type, 'xdp');
      assert.equal(xdpLink.ifindex, lab.ifindexB);
      assert.equal(xdpLink.progId, xdpProg.id);
      assert.equal(tcLink.type, 'tcx');
      assert.equal(tcLink.attachType, 'tcx_egress');
      assert.equal(linkInfo(tcLink.id).progId, tcProg.id);
      const ids = listLinks().map((l) => l.id);
      assert.ok(ids.includes(xdpLink.id) && ids.includes(tcLink.id));

      const attached = inNetns(lab.nsA, () => queryProgs(lab.ifindexA, 'tcx_egress'));
      assert.deepEqual(attached.progIds, [tcProg.id]);
      assert.deepEqual(attached.linkIds, [tcLink.id]);
      assert.equal(inNetns(lab.nsA, () => queryProgs(lab.ifindexA, 'tcx_ingress')).progIds.length, 0);
      assert.ok(hasXdp(lab.nsB, lab.devB));

      // IPv6 housekeeping (DAD, router solicitations) may already have been counted.
      const xdpBefore = count(xdpCounts);
      const tcBefore = count(tcCounts);
      assert.ok(lab.ping(3), 'ping through the programs works');
      // 3 echo requests (plus ARP) leave A and arrive at B.
      const xdpSeen = count(xdpCounts) - xdpBefore;
      const tcSeen = count(tcCounts) - tcBefore;
      assert.ok(xdpSeen >= 3n && xdpSeen < 20n, `xdp counted ${xdpSeen}`);
      assert.ok(tcSeen >= 3n && tcSeen < 20n, `tcx counted ${tcSeen}`);
    } finally {
      xdpLink.close();
      tcLink.close();
    }

    assert.deepEqual(inNetns(lab.nsA, () => queryProgs(lab.ifindexA, 'tcx_egress')).progIds, []);
    assert.equal(hasXdp(lab.nsB, lab.devB), false);
    const before = [count(xdpCounts), count(tcCounts)];
    assert.ok(lab.ping(2));
    assert.deepEqual([count(xdpCounts), count(tcCounts)], before, 'nothing counts after the links are closed');
  } finally {
    lab.destroy();
  }
});

kernelTest('a second XDP link on the same interface is refused with a hint; detachLink detaches while the fd is open', () => {
  const lab = createVethLab();
  try {
    const code = countingProgram(XDP_PASS);
    using counts = counterMap('nm_cnt');
    using prog = loadProgram({ type: 'xdp', insns: code.insns, mapRefs: code.mapRefs, maps: { counts } });
    using link = inNetns(lab.nsB, () => createXdpLink(prog, lab.ifindexB, { mode: 'skb' }));
    assert.throws(() => inNetns(lab.nsB, () => createXdpLink(prog, lab.ifindexB, { mode: 'skb' })), (err: unknown) => {
      assert.ok(err instanceof BpfError);
      assert.ok(err.code === 'EBUSY' || err.code === 'EEXIST', err.code);
      assert.match(err.hint ?? '', /another program already holds this hook/);
      return true;
    });

    using tcProg = loadTc();
    using tcx = inNetns(lab.nsB, () => createTcxLink(tcProg, lab.ifindexB, 'ingress'));
    assert.equal(inNetns(lab.nsB, () => queryProgs(lab.ifindexB, 'tcx_ingress')).linkIds[0], tcx.id);
    detachLink(tcx);
    assert.deepEqual(inNetns(lab.nsB, () => queryProgs(lab.ifindexB, 'tcx_ingress')).progIds, []);
    assert.equal(tcx.closed, false);
    detachLink(link);
    assert.equal(hasXdp(lab.nsB, lab.devB), false);
  } finally {
    lab.destroy();
  }
});

function loadTc() {
  const code = countingProgram(TC_ACT_OK);
  const counts = counterMap('nm_cnt_tc');
  try {
    return loadProgram({ type: 'sched_cls', insns: code.insns, mapRefs: code.mapRefs, maps: { counts } });
  } finally {
    counts.close(); // the program keeps its own reference to the map
  }
}

kernelTest('a pinned tcx link outlives its fd until the pin is removed', () => {
  const lab = createVethLab();
  const dir = pinDir(`test-${process.pid}`);
  const path = join(dir, 'link');
  try {
    using prog = loadTc();
    const link = inNetns(lab.nsA, () => createTcxLink(prog, lab.ifindexA, 'ingress'));
    link.pin(path);
    const id = link.id;
    link.close();
    assert.deepEqual(inNetns(lab.nsA, () => queryProgs(lab.ifindexA, 'tcx_ingress')).linkIds, [id]);
    using again = openPinnedLink(path);
    assert.equal(again.id, id);
    assert.equal(again.attachType, 'tcx_ingress');
    unlinkSync(path);
    again.close();
    assert.deepEqual(inNetns(lab.nsA, () => queryProgs(lab.ifindexA, 'tcx_ingress')).progIds, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    lab.destroy();
  }
});

kernelTest('kill -9 of a process holding XDP and tcx links leaves no program on the interfaces', async () => {
  const lab = createVethLab();
  const dist = (p: string) => pathToFileURL(resolve('dist', p)).href;
  const childCode = `
    import { inNetns } from ${JSON.stringify(dist('src/kernel/netns.js'))};
    import { loadProgram, createTcxLink, createXdpLink } from ${JSON.stringify(dist('src/kernel/index.js'))};
    import { Assembler, R0 } from ${JSON.stringify(dist('src/bpf/index.js'))};
    const ret = (v) => new Assembler().movImm(R0, v).exit().assemble().insns;
    const tc = loadProgram({ type: 'sched_cls', insns: ret(0), name: 'nm_orphan_tc' });
    const xdp = loadProgram({ type: 'xdp', insns: ret(2), name: 'nm_orphan_xdp' });
    const tcx = inNetns(${JSON.stringify(lab.nsA)}, () => createTcxLink(tc, ${lab.ifindexA}, 'egress'));
    const xl = inNetns(${JSON.stringify(lab.nsB)}, () => createXdpLink(xdp, ${lab.ifindexB}));
    process.stdout.write(JSON.stringify({ tc: tc.id, xdp: xdp.id, tcx: tcx.id, xl: xl.id }) + '\\n');
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', childCode], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const line = await new Promise<string>((resolveLine, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`child printed nothing in 10 s; stderr: ${stderr}`)), 10_000);
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) {
          clearTimeout(timer);
          resolveLine(out.split('\n')[0]!);
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`child exited (${code}) early; stderr: ${stderr}`));
      });
    });
    const ids = JSON.parse(line) as { tc: number; xdp: number; tcx: number; xl: number };
    assert.deepEqual(inNetns(lab.nsA, () => queryProgs(lab.ifindexA, 'tcx_egress')).progIds, [ids.tc]);
    assert.ok(hasXdp(lab.nsB, lab.devB));

    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;

    // The kernel releases the dead process's fds; the links and then the programs go away.
    let tcxGone = false;
    let xdpGone = false;
    for (let i = 0; i < 50 && !(tcxGone && xdpGone); i++) {
      tcxGone = inNetns(lab.nsA, () => queryProgs(lab.ifindexA, 'tcx_egress')).progIds.length === 0;
      xdpGone = !hasXdp(lab.nsB, lab.devB);
      if (!(tcxGone && xdpGone)) await sleep(100);
    }
    assert.ok(tcxGone, 'tcx program still attached after kill -9');
    assert.ok(xdpGone, 'XDP program still attached after kill -9');
    assert.ok(!listLinks().some((l) => l.id === ids.tcx || l.id === ids.xl), 'links are gone');
    let progGone = false;
    for (let i = 0; i < 50 && !progGone; i++) {
      try {
        closeFd(programFdById(ids.tc));
        await sleep(100);
      } catch (err) {
        progGone = err instanceof BpfError && err.code === 'ENOENT';
        if (!progGone) throw err;
      }
    }
    assert.ok(progGone, 'the orphaned program is unloaded');
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    lab.destroy();
  }
});

kernelTest('updateLink swaps the program of a tcx link and of an XDP link in place; a stale expectedOld is refused', () => {
  const lab = createVethLab();
  try {
    using oldCounts = counterMap('nm_old_cnt');
    using newCounts = counterMap('nm_new_cnt');
    const tc = (counts: ReturnType<typeof counterMap>, name: string) => {
      const code = countingProgram(TC_ACT_OK);
      return loadProgram({ type: 'sched_cls', insns: code.insns, mapRefs: code.mapRefs, maps: { counts }, name });
    };
    using oldProg = tc(oldCounts, 'nm_old');
    using newProg = tc(newCounts, 'nm_new');
    using link = inNetns(lab.nsA, () => createTcxLink(oldProg, lab.ifindexA, 'egress'));
    updateLink(link, newProg, oldProg);
    assert.equal(linkInfo(link.id).progId, newProg.id);
    const onHook = inNetns(lab.nsA, () => queryProgs(lab.ifindexA, 'tcx_egress'));
    assert.deepEqual(onHook.progIds, [newProg.id], 'one program on the hook: the new one');
    assert.deepEqual(onHook.linkIds, [link.id], 'the same link');
    const before = [count(oldCounts), count(newCounts)];
    assert.ok(lab.ping(2));
    assert.equal(count(oldCounts), before[0], 'the old program sees nothing after the update');
    assert.ok(count(newCounts) - before[1]! >= 2n, 'the new program counts the pings');
    // The link no longer holds oldProg: an update that expects it must fail and change nothing.
    assert.throws(() => updateLink(link, oldProg, oldProg), (err: unknown) => err instanceof BpfError && err.errno === 1 /* EPERM */);
    assert.equal(linkInfo(link.id).progId, newProg.id);

    const xdpCode = countingProgram(XDP_PASS);
    using xdpA = loadProgram({ type: 'xdp', insns: xdpCode.insns, mapRefs: xdpCode.mapRefs, maps: { counts: oldCounts }, name: 'nm_xdp_a' });
    using xdpB = loadProgram({ type: 'xdp', insns: xdpCode.insns, mapRefs: xdpCode.mapRefs, maps: { counts: newCounts }, name: 'nm_xdp_b' });
    using xdpLink = inNetns(lab.nsB, () => createXdpLink(xdpA, lab.ifindexB, { mode: 'skb' }));
    updateLink(xdpLink, xdpB);
    assert.equal(linkInfo(xdpLink.id).progId, xdpB.id);
    // A program of another type cannot take the place of an XDP program.
    assert.throws(() => updateLink(xdpLink, newProg), (err: unknown) => err instanceof BpfError);
    assert.equal(linkInfo(xdpLink.id).progId, xdpB.id);
  } finally {
    lab.destroy();
  }
});
