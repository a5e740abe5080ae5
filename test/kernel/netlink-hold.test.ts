// What the guardian and `clear` do with a record of a netlink attachment, against the real
// kernel: remove exactly the recorded program, never one put in its place, and the clsact qdisc
// only when netmangle added it and no filter of any kind is left. Priorities after existing filters.
// Works without tcx (everything here is netlink).
import assert from 'node:assert/strict';
import { kernelTest } from '../helpers/kernel.js';
import { attachProgram } from '../../src/kernel/attach.js';
import { inNetns } from '../../src/kernel/netns.js';
import { ifindexByName } from '../../src/kernel/iface.js';
import { holdState, removeHold, type NetlinkHold, type NetlinkOwner } from '../../src/kernel/netlink-hold.js';
import {
  addClsBpfFilter, attachXdpNetlink, delClsBpfFilter, detachXdpNetlink, hasClsact, listClsBpfFilters, listTcFilters, xdpQueryNetlink,
} from '../../src/kernel/rtnetlink.js';
import { ip, loadCounter, makeVethLab } from './netlink-lab.js';

/** An owner that keeps every record it is given. */
function recordingOwner(): NetlinkOwner & { holds: NetlinkHold[]; forgotten: number } {
  const o = {
    holds: [] as NetlinkHold[],
    forgotten: 0,
    record(h: NetlinkHold) {
      o.holds.push({ ...h, tcFilter: h.tcFilter && { ...h.tcFilter } });
    },
    forget() {
      o.forgotten += 1;
    },
  };
  return o;
}

kernelTest('netlink tc: records before and after each step; removeHold takes exactly its filter and the clsact it added', () => {
  const lab = makeVethLab();
  const ours = loadCounter('sched_cls', 'hold_ours');
  try {
    const owner = recordingOwner();
    const att = attachProgram(ours.prog, { dev: lab.devA, hook: 'egress', netns: lab.nsA, path: 'netlink', owner });
    assert.equal(att.warning, undefined, 'owned: no crash warning');
    // Before anything (filter place chosen), after adding clsact, once attached.
    assert.deepEqual(owner.holds.map((h) => [h.attached, h.clsactAdded]), [[false, false], [false, true], [true, true]]);
    const hold = owner.holds.at(-1)!;
    assert.equal(hold.progId, ours.prog.id);
    assert.match(hold.progTag, /^[0-9a-f]{16}$/);
    assert.deepEqual(hold.tcFilter, { prio: 1, handle: 1 });
    assert.equal(hold.netns, lab.nsA);
    assert.ok(hold.netnsInode, 'namespace inode recorded');
    assert.equal(holdState(hold), 'attached');
    // As if the owner died: the record alone removes it, clsact included.
    const r = removeHold(hold);
    assert.deepEqual(r, { removed: true, clsactRemoved: true, state: 'gone' });
    const ifindex = ifindexByName(lab.devA, lab.nsA);
    assert.equal(inNetns(lab.nsA, () => hasClsact(ifindex)), false);
    assert.equal(holdState(hold), 'gone');
    att.detach(); // finds nothing left; idempotent
    assert.equal(owner.forgotten, 1);
  } finally {
    ours.close();
    lab.cleanup();
  }
});

kernelTest('removeHold leaves a program someone put in the recorded place, and a clsact that holds another filter (u32 where the kernel has it)', () => {
  const lab = makeVethLab();
  const ours = loadCounter('sched_cls', 'hold_ours');
  const theirs = loadCounter('sched_cls', 'hold_theirs');
  try {
    const owner = recordingOwner();
    attachProgram(ours.prog, { dev: lab.devA, hook: 'ingress', netns: lab.nsA, path: 'netlink', owner });
    const hold = owner.holds.at(-1)!;
    const ifindex = ifindexByName(lab.devA, lab.nsA);
    // Someone replaced our filter with theirs at the same priority and handle, and added a u32 filter.
    inNetns(lab.nsA, () => {
      delClsBpfFilter(ifindex, 'ingress', hold.tcFilter!);
      addClsBpfFilter(ifindex, 'ingress', theirs.prog.fd, { name: 'theirs', ...hold.tcFilter! });
    });
    assert.equal(holdState(hold), 'gone', 'another program there is not ours');
    const r = removeHold(hold);
    assert.equal(r.removed, false);
    assert.deepEqual(inNetns(lab.nsA, () => listClsBpfFilters(ifindex, 'ingress')).map((f) => f.progId), [theirs.prog.id]);
    assert.equal(inNetns(lab.nsA, () => hasClsact(ifindex)), true, 'clsact stays while a filter uses it');

    // Only a foreign filter left on the qdisc netmangle added, at the other direction: it stays too.
    inNetns(lab.nsA, () => delClsBpfFilter(ifindex, 'ingress', hold.tcFilter!));
    const kind = addForeignFilter(lab.nsA, lab.devA, 'egress', 7, theirs.prog);
    assert.ok(inNetns(lab.nsA, () => listTcFilters(ifindex, 'egress')).some((f) => f.kind === kind));
    removeHold(hold);
    assert.equal(inNetns(lab.nsA, () => hasClsact(ifindex)), true, `a ${kind} filter keeps the clsact qdisc`);
  } finally {
    ours.close();
    theirs.close();
    lab.cleanup();
  }
});

function execTc(ns: string, args: string[]): void {
  ip('netns', 'exec', ns, 'tc', ...args);
}

/**
 * Adds a filter of another kind than netmangle's own at `prio`: u32 where the kernel has the
 * classifier (cls_u32), else a cls_bpf filter of a program of the test's (a kernel built or
 * booted without cls_u32, as the kernel matrix's guest is). Returns its kind.
 */
function addForeignFilter(ns: string, dev: string, dir: 'ingress' | 'egress', prio: number, prog: { fd: number }): string {
  try {
    execTc(ns, ['filter', 'add', 'dev', dev, dir, 'prio', String(prio), 'u32', 'match', 'u32', '0', '0']);
    return 'u32';
  } catch (err) {
    if (!/classifier not found/i.test(String((err as { stderr?: unknown }).stderr ?? err))) throw err;
  }
  inNetns(ns, () => addClsBpfFilter(ifindexByName(dev), dir, prog.fd, { name: 'foreign', prio }));
  return 'bpf';
}

kernelTest('removeHold at XDP: the kernel compares; a program attached in its place stays', () => {
  const lab = makeVethLab();
  const ours = loadCounter('xdp', 'hold_xdp');
  const theirs = loadCounter('xdp', 'hold_xdp2');
  try {
    const owner = recordingOwner();
    attachProgram(ours.prog, { dev: lab.devA, hook: 'xdp', netns: lab.nsA, path: 'netlink', owner });
    const hold = owner.holds.at(-1)!;
    assert.equal(hold.attached, true);
    assert.ok(hold.xdpMode, 'mode recorded');
    const ifindex = ifindexByName(lab.devA, lab.nsA);
    inNetns(lab.nsA, () => {
      detachXdpNetlink(ifindex);
      attachXdpNetlink(ifindex, theirs.prog.fd, { mode: hold.xdpMode! });
    });
    assert.equal(removeHold(hold).removed, false);
    assert.equal(inNetns(lab.nsA, () => xdpQueryNetlink(ifindex)).progId, theirs.prog.id);
    inNetns(lab.nsA, () => detachXdpNetlink(ifindex));
    // And ours, put back, goes.
    inNetns(lab.nsA, () => attachXdpNetlink(ifindex, ours.prog.fd, { mode: hold.xdpMode! }));
    assert.equal(removeHold(hold).removed, true);
    assert.equal(inNetns(lab.nsA, () => xdpQueryNetlink(ifindex)).attached, 'none');
  } finally {
    ours.close();
    theirs.close();
    lab.cleanup();
  }
});

kernelTest('a namespace name given to another namespace holds nothing of the record; once the program is freed the record is stale', async () => {
  const lab = makeVethLab();
  const ours = loadCounter('sched_cls', 'hold_ns');
  try {
    const owner = recordingOwner();
    attachProgram(ours.prog, { dev: lab.devA, hook: 'egress', netns: lab.nsA, path: 'netlink', owner });
    const hold = owner.holds.at(-1)!;
    ip('netns', 'del', lab.nsA);
    ip('netns', 'add', lab.nsA);
    // The program still exists (this test holds it). Whether the new namespace is told apart by
    // its inode depends on the kernel (6.1 hands the freed inode number to the next namespace,
    // 6.18 does not): either way the program id on the hook decides, and nothing is removed.
    assert.notEqual(holdState(hold), 'attached');
    assert.equal(removeHold(hold).removed, false);
    // With its last holder gone the program is freed (after the namespace's teardown): stale.
    ours.close();
    let state = holdState(hold);
    for (let i = 0; i < 100 && state !== 'gone'; i++) {
      await new Promise((r) => setTimeout(r, 20));
      state = holdState(hold);
    }
    assert.equal(state, 'gone');
  } finally {
    ours.close();
    lab.cleanup();
  }
});

kernelTest('netlink tc without a priority goes after the filters already there; with one, takes it', () => {
  const lab = makeVethLab();
  const a = loadCounter('sched_cls', 'prio_a');
  const b = loadCounter('sched_cls', 'prio_b');
  const c = loadCounter('sched_cls', 'prio_c');
  const foreign = loadCounter('sched_cls', 'prio_foreign');
  try {
    execTc(lab.nsA, ['qdisc', 'add', 'dev', lab.devA, 'clsact']);
    addForeignFilter(lab.nsA, lab.devA, 'egress', 40, foreign.prog);
    const first = attachProgram(a.prog, { dev: lab.devA, hook: 'egress', netns: lab.nsA, path: 'netlink' });
    assert.equal(first.tcFilter?.prio, 41);
    const second = attachProgram(b.prog, { dev: lab.devA, hook: 'egress', netns: lab.nsA, path: 'netlink' });
    assert.equal(second.tcFilter?.prio, 42);
    const asked = attachProgram(c.prog, { dev: lab.devA, hook: 'egress', netns: lab.nsA, path: 'netlink', tcPriority: 3 });
    assert.equal(asked.tcFilter?.prio, 3);
    const ifindex = ifindexByName(lab.devA, lab.nsA);
    assert.deepEqual(inNetns(lab.nsA, () => listTcFilters(ifindex, 'egress')).map((f) => f.prio).filter((p, i, all) => all.indexOf(p) === i).sort((x, y) => x - y), [3, 40, 41, 42]);
    for (const att of [first, second, asked]) att.detach();
    assert.equal(inNetns(lab.nsA, () => hasClsact(ifindex)), true, 'the clsact was there before netmangle');
  } finally {
    a.close();
    b.close();
    c.close();
    foreign.close();
    lab.cleanup();
  }
});
