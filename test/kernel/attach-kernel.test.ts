// attachProgram against the real kernel: every path attaches, counts traffic and detaches
// leaving nothing behind; foreign programs and bad targets are refused in one clear line.
import assert from 'node:assert/strict';
import { kernelProbe, kernelTest } from '../helpers/kernel.js';
import { programsOnHook as programsAt } from '../helpers/hooks.js';
import { attachProgram, type Attachment, type Hook } from '../../src/kernel/attach.js';
import { inNetns } from '../../src/kernel/netns.js';
import { attachXdpNetlink, detachXdpNetlink, hasClsact, xdpQueryNetlink } from '../../src/kernel/rtnetlink.js';
import { ifindexByName } from '../../src/kernel/iface.js';
import { NetmangleError, UsageError } from '../../src/errors.js';
import { ip, loadCounter, makeVethLab, ping, type Counter, type VethLab } from './netlink-lab.js';

/** Program ids on a hook of devA, by whichever mechanism could hold them. */
function programsOnHook(lab: VethLab, hook: Hook): number[] {
  return programsAt(lab.nsA, lab.devA, hook);
}

function clsactPresent(lab: VethLab): boolean {
  return inNetns(lab.nsA, () => hasClsact(ifindexByName(lab.devA)));
}

function attachCountDetach(path: 'auto' | 'netlink'): void {
  const lab = makeVethLab();
  const counters: Counter[] = [];
  const attachments: Attachment[] = [];
  try {
    for (const hook of ['xdp', 'ingress', 'egress'] as const) {
      const c = loadCounter(hook === 'xdp' ? 'xdp' : 'sched_cls', `at_${hook}`);
      counters.push(c);
      const att = attachProgram(c.prog, { dev: lab.devA, hook, netns: lab.nsA, path });
      attachments.push(att);
      assert.equal(att.dev, lab.devA);
      assert.equal(att.netns, lab.nsA);
      assert.equal(att.hook, hook);
      assert.equal(att.progId, c.prog.id);
      assert.equal(att.ifindex, inNetns(lab.nsA, () => ifindexByName(lab.devA)));
      // auto takes what the probe found: links where the kernel has them (XDP links 5.9, tcx 6.6).
      const expected = path === 'auto' ? kernelProbe().attach[hook] : 'netlink';
      assert.equal(att.path, expected);
      if (expected !== 'netlink') {
        assert.ok(att.link, 'a link object');
        assert.equal(att.warning, undefined);
      } else {
        assert.equal(att.path, 'netlink');
        assert.equal(att.link, undefined);
        assert.match(att.warning ?? '', /crash/);
      }
      if (hook === 'xdp') assert.equal(att.xdpMode, 'drv', 'veth has native XDP, so auto mode picks drv');
      // XDP reports the program twice (the single id and the drv-mode id).
      assert.deepEqual(programsOnHook(lab, hook), hook === 'xdp' ? [c.prog.id, c.prog.id] : [c.prog.id]);
    }
    assert.equal(ping(lab.nsB, lab.addrA), 3);
    const seen = counters.map((c) => c.count());
    for (const [i, n] of seen.entries()) assert.ok(n >= 3n, `${['xdp', 'ingress', 'egress'][i]} saw ${n} packets`);

    for (const att of attachments) {
      att.detach();
      assert.equal(att.detached, true);
      att.detach(); // idempotent
    }
    for (const hook of ['xdp', 'ingress', 'egress'] as const) assert.deepEqual(programsOnHook(lab, hook), [], `${hook} is empty`);
    assert.equal(clsactPresent(lab), false, 'no clsact qdisc left behind');
    assert.equal(ping(lab.nsB, lab.addrA), 3);
    assert.deepEqual(counters.map((c) => c.count()), seen, 'detached programs count nothing more');
  } finally {
    for (const att of attachments) {
      try {
        att.detach();
      } catch { /* the namespace goes anyway */ }
    }
    lab.cleanup();
    for (const c of counters) c.close();
  }
}

kernelTest('attachProgram path auto uses the links the probe found (XDP link, tcx), else netlink, and detaches cleanly', () => attachCountDetach('auto'));

kernelTest('attachProgram path netlink uses IFLA_XDP and clsact/cls_bpf, and detaches cleanly', () => attachCountDetach('netlink'));

kernelTest('attachProgram refuses an interface holding a foreign XDP program, naming it', () => {
  const lab = makeVethLab();
  const foreign = loadCounter('xdp', 'foreign_xdp');
  const ours = loadCounter('xdp', 'ours_xdp');
  try {
    inNetns(lab.nsA, () => attachXdpNetlink(ifindexByName(lab.devA), foreign.prog.fd, { mode: 'skb' }));
    for (const path of ['auto', 'netlink'] as const) {
      assert.throws(() => attachProgram(ours.prog, { dev: lab.devA, hook: 'xdp', netns: lab.nsA, path }), (e: unknown) => {
        assert.ok(e instanceof NetmangleError);
        assert.match(e.message, new RegExp(`already holds XDP program id ${foreign.prog.id} 'foreign_xdp' \\(skb mode\\)`));
        assert.match(e.hint ?? '', /xdp off/);
        return true;
      });
    }
    assert.deepEqual(programsOnHook(lab, 'xdp'), [foreign.prog.id, foreign.prog.id], 'the foreign program is untouched');
    inNetns(lab.nsA, () => detachXdpNetlink(ifindexByName(lab.devA)));
  } finally {
    lab.cleanup();
    foreign.close();
    ours.close();
  }
});

kernelTest('a second tcx attach of the same program is refused naming what holds the hook', { needs: 'tcx' }, () => {
  const lab = makeVethLab();
  const c = loadCounter('sched_cls', 'tcx_twice');
  let first: Attachment | undefined;
  try {
    first = attachProgram(c.prog, { dev: lab.devA, hook: 'egress', netns: lab.nsA, path: 'tcx' });
    assert.throws(() => attachProgram(c.prog, { dev: lab.devA, hook: 'egress', netns: lab.nsA, path: 'tcx' }), (e: unknown) => {
      assert.ok(e instanceof NetmangleError);
      assert.match(e.message, new RegExp(`tcx egress of ${lab.devA} \\(namespace ${lab.nsA}\\): it already holds program id ${c.prog.id} 'tcx_twice'`));
      return true;
    });
    first[Symbol.dispose]();
    assert.deepEqual(programsOnHook(lab, 'egress'), []);
  } finally {
    first?.detach();
    lab.cleanup();
    c.close();
  }
});

kernelTest('attachProgram errors: missing interface, missing namespace, wrong program type, bad path', () => {
  const lab = makeVethLab();
  const xdp = loadCounter('xdp', 'err_xdp');
  try {
    assert.throws(() => attachProgram(xdp.prog, { dev: 'nosuch0', hook: 'xdp', netns: lab.nsA }), (e: unknown) =>
      e instanceof NetmangleError && e.message === `no interface nosuch0 in namespace ${lab.nsA}`);
    assert.throws(() => attachProgram(xdp.prog, { dev: lab.devA, hook: 'xdp' }), (e: unknown) =>
      e instanceof NetmangleError && e.message === `no interface ${lab.devA} in this namespace`);
    assert.throws(() => attachProgram(xdp.prog, { dev: 'lo', hook: 'xdp', netns: 'nm-no-such-ns' }), (e: unknown) =>
      e instanceof NetmangleError && e.message === 'no network namespace nm-no-such-ns (see `ip netns list`)');
    assert.throws(() => attachProgram(xdp.prog, { dev: lab.devA, hook: 'ingress', netns: lab.nsA }), (e: unknown) =>
      e instanceof UsageError && /needs a sched_cls program/.test(e.message));
    assert.throws(() => attachProgram(xdp.prog, { dev: lab.devA, hook: 'xdp', netns: lab.nsA, path: 'tcx' }), UsageError);
    assert.deepEqual(programsOnHook(lab, 'xdp'), []);
  } finally {
    lab.cleanup();
    xdp.close();
  }
});

kernelTest('path link attaches where the probe found tcx and is refused in one line where it did not', () => {
  const lab = makeVethLab();
  const c = loadCounter('sched_cls', 'link_or_not');
  try {
    if (kernelProbe().features.tcx) {
      const att = attachProgram(c.prog, { dev: lab.devA, hook: 'ingress', netns: lab.nsA, path: 'link' });
      try {
        assert.equal(att.path, 'tcx');
        assert.deepEqual(programsOnHook(lab, 'ingress'), [c.prog.id]);
      } finally {
        att.detach();
      }
    } else {
      assert.throws(() => attachProgram(c.prog, { dev: lab.devA, hook: 'ingress', netns: lab.nsA, path: 'link' }), (e: unknown) => {
        assert.ok(e instanceof NetmangleError);
        assert.match(e.message, /^this kernel \(.+\) has no tcx links \(Linux 6\.6 and later\), so nothing can attach at ingress through a BPF link$/);
        assert.match(e.hint ?? '', /--attach netlink/);
        return true;
      });
    }
    assert.deepEqual(programsOnHook(lab, 'ingress'), []);
    assert.equal(clsactPresent(lab), false);
  } finally {
    lab.cleanup();
    c.close();
  }
});

kernelTest('xdpMode skb is honoured on both paths', () => {
  const lab = makeVethLab();
  const c = loadCounter('xdp', 'skb_mode');
  try {
    for (const path of ['link', 'netlink'] as const) {
      const att = attachProgram(c.prog, { dev: lab.devA, hook: 'xdp', netns: lab.nsA, path, xdpMode: 'skb' });
      try {
        assert.equal(att.xdpMode, 'skb');
        const state = inNetns(lab.nsA, () => xdpQueryNetlink(att.ifindex));
        assert.equal(state.attached, 'skb');
        assert.equal(state.skbProgId, c.prog.id);
      } finally {
        att.detach();
      }
      assert.deepEqual(programsOnHook(lab, 'xdp'), []);
    }
  } finally {
    lab.cleanup();
    c.close();
  }
});

kernelTest('XDP mode auto falls back to skb on a device without native XDP; forced drv fails naming the device', () => {
  const lab = makeVethLab();
  const c = loadCounter('xdp', 'fallback');
  const bridge = 'nmbr0';
  try {
    ip('-n', lab.nsA, 'link', 'add', bridge, 'type', 'bridge');
    ip('-n', lab.nsA, 'link', 'set', bridge, 'up');
    for (const path of ['link', 'netlink'] as const) {
      const att = attachProgram(c.prog, { dev: bridge, hook: 'xdp', netns: lab.nsA, path });
      try {
        assert.equal(att.xdpMode, 'skb');
        assert.equal(inNetns(lab.nsA, () => xdpQueryNetlink(att.ifindex)).skbProgId, c.prog.id);
      } finally {
        att.detach();
      }
      assert.deepEqual(inNetns(lab.nsA, () => xdpQueryNetlink(att.ifindex)), { attached: 'none' });
      assert.throws(() => attachProgram(c.prog, { dev: bridge, hook: 'xdp', netns: lab.nsA, path, xdpMode: 'drv' }), (e: unknown) => {
        assert.ok(e instanceof NetmangleError);
        assert.match(e.message, new RegExp(`^cannot attach XDP program 'fallback' to ${bridge} \\(namespace ${lab.nsA}\\): ENOTSUP`));
        assert.ok(!e.message.includes('\n'));
        assert.match(e.hint ?? '', /skb/);
        // Through netlink the kernel explains itself in an extended ack.
        if (path === 'netlink') assert.match(e.message, /\(Underlying driver does not support XDP in native mode\)$/);
        return true;
      });
    }
  } finally {
    lab.cleanup();
    c.close();
  }
});
