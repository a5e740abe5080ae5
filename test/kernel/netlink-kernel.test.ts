// rtnetlink and namespaces against the real kernel, inside namespaces made for each test.
import assert from 'node:assert/strict';
import { readlinkSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { kernelTest } from '../helpers/kernel.js';
import { ifindexByName, listLinks, ifnameByIndex } from '../../src/kernel/iface.js';
import { inNetns, listNetns, netnsExists } from '../../src/kernel/netns.js';
import { NetlinkError } from '../../src/kernel/netlink.js';
import {
  addClsBpfFilter, attachXdpNetlink, delClsBpfFilter, detachXdpNetlink, ensureClsact, hasClsact, listClsBpfFilters,
  removeClsact, xdpQueryNetlink,
} from '../../src/kernel/rtnetlink.js';
import { NetmangleError } from '../../src/errors.js';
import { ip, loadCounter, makeVethLab, ping } from './netlink-lab.js';

function ipIfindex(ns: string, dev: string): number {
  const [entry] = JSON.parse(ip('-n', ns, '-j', 'link', 'show', 'dev', dev)) as Array<{ ifindex: number }>;
  return entry!.ifindex;
}

kernelTest('ifindexByName and listLinks answer for the namespace asked, not ours', () => {
  const lab = makeVethLab();
  try {
    assert.equal(ifindexByName(lab.devA, lab.nsA), ipIfindex(lab.nsA, lab.devA));
    assert.equal(ifindexByName(lab.devB, lab.nsB), ipIfindex(lab.nsB, lab.devB));
    assert.equal(ifindexByName('lo', lab.nsA), 1);
    assert.equal(ifnameByIndex(ipIfindex(lab.nsA, lab.devA), lab.nsA), lab.devA);
    const links = listLinks(lab.nsA);
    assert.deepEqual(links.map((l) => l.name).sort(), [lab.devA, 'lo'].sort());
    const veth = links.find((l) => l.name === lab.devA)!;
    assert.equal(veth.kind, 'veth');
    assert.equal(veth.up, true);
    assert.equal(veth.xdp.attached, 'none');
    // devA does not exist in our own namespace.
    assert.throws(() => ifindexByName(lab.devA), (e: unknown) =>
      e instanceof NetmangleError && e.message === `no interface ${lab.devA} in this namespace`);
    assert.throws(() => ifindexByName('nosuchdev0', lab.nsA), (e: unknown) =>
      e instanceof NetmangleError && e.message === `no interface nosuchdev0 in namespace ${lab.nsA}` && /ip -n/.test(e.hint ?? ''));
    assert.ok(listNetns().includes(lab.nsA));
    assert.ok(netnsExists(lab.nsB));
  } finally {
    lab.cleanup();
  }
  assert.equal(netnsExists(lab.nsA), false);
  assert.throws(() => ifindexByName('lo', lab.nsA), (e: unknown) =>
    e instanceof NetmangleError && e.message === `no network namespace ${lab.nsA} (see \`ip netns list\`)`);
});

kernelTest('inNetns switches the thread and always switches back, also when fn throws or nests', () => {
  const lab = makeVethLab();
  const home = readlinkSync('/proc/self/ns/net');
  try {
    const inodeA = statSync(`/run/netns/${lab.nsA}`).ino;
    const inodeB = statSync(`/run/netns/${lab.nsB}`).ino;
    const seen = inNetns(lab.nsA, () => readlinkSync('/proc/self/ns/net'));
    assert.equal(seen, `net:[${inodeA}]`);
    assert.equal(readlinkSync('/proc/self/ns/net'), home);

    assert.throws(() => inNetns(lab.nsA, () => {
      throw new Error('boom');
    }), /boom/);
    assert.equal(readlinkSync('/proc/self/ns/net'), home, 'back home after a throw');

    const nested = inNetns(lab.nsA, () => {
      const inner = inNetns(lab.nsB, () => readlinkSync('/proc/self/ns/net'));
      return [inner, readlinkSync('/proc/self/ns/net')];
    });
    assert.deepEqual(nested, [`net:[${inodeB}]`, `net:[${inodeA}]`], 'the inner call returns to the outer namespace');
    assert.equal(readlinkSync('/proc/self/ns/net'), home);

    assert.throws(() => inNetns(lab.nsA, () => Promise.resolve(1)), /returned a promise/);
    assert.equal(readlinkSync('/proc/self/ns/net'), home, 'back home after refusing a promise');
  } finally {
    lab.cleanup();
  }
});

kernelTest('netlink XDP: attach, query, refuse a second program, detach', () => {
  const lab = makeVethLab();
  const first = loadCounter('xdp', 'nl_xdp_a');
  const second = loadCounter('xdp', 'nl_xdp_b');
  try {
    inNetns(lab.nsA, () => {
      const ifindex = ifindexByName(lab.devA);
      assert.deepEqual(xdpQueryNetlink(ifindex), { attached: 'none' });

      attachXdpNetlink(ifindex, first.prog.fd, { mode: 'skb' });
      const state = xdpQueryNetlink(ifindex);
      assert.equal(state.attached, 'skb');
      assert.equal(state.progId, first.prog.id);

      assert.throws(() => attachXdpNetlink(ifindex, second.prog.fd, { mode: 'skb' }), (e: unknown) =>
        e instanceof NetlinkError && e.code === 'EBUSY');
      assert.equal(xdpQueryNetlink(ifindex).progId, first.prog.id, 'still the first program');

      attachXdpNetlink(ifindex, second.prog.fd, { mode: 'skb', replace: true });
      assert.equal(xdpQueryNetlink(ifindex).progId, second.prog.id, 'replace swaps it');

      assert.equal(detachXdpNetlink(ifindex), true);
      assert.deepEqual(xdpQueryNetlink(ifindex), { attached: 'none' });
      assert.equal(detachXdpNetlink(ifindex), false);

      // veth has a native XDP path: driver mode works too.
      attachXdpNetlink(ifindex, first.prog.fd, { mode: 'drv' });
      assert.deepEqual(xdpQueryNetlink(ifindex), { attached: 'drv', progId: first.prog.id, drvProgId: first.prog.id });
    });
    assert.equal(ping(lab.nsB, lab.addrA), 3);
    assert.ok(first.count() >= 3n, `drv-mode XDP saw ${first.count()} packets`);
    inNetns(lab.nsA, () => {
      const ifindex = ifindexByName(lab.devA);
      assert.equal(detachXdpNetlink(ifindex, { mode: 'drv' }), true);
      assert.deepEqual(xdpQueryNetlink(ifindex), { attached: 'none' });
    });
  } finally {
    lab.cleanup();
    first.close();
    second.close();
  }
});

kernelTest('clsact and cls_bpf: add, list, count real traffic at ingress and egress, delete', () => {
  const lab = makeVethLab();
  const ingress = loadCounter('sched_cls', 'nl_tc_in');
  const egress = loadCounter('sched_cls', 'nl_tc_eg');
  try {
    const ifindex = ifindexByName(lab.devA, lab.nsA);
    inNetns(lab.nsA, () => {
      assert.equal(hasClsact(ifindex), false);
      assert.deepEqual(listClsBpfFilters(ifindex, 'ingress'), []);
      assert.equal(ensureClsact(ifindex), true);
      assert.equal(ensureClsact(ifindex), false, 'a second ensure finds it there');
      assert.equal(hasClsact(ifindex), true);
      addClsBpfFilter(ifindex, 'ingress', ingress.prog.fd, { name: 'nm_in', prio: 1 });
      addClsBpfFilter(ifindex, 'egress', egress.prog.fd, { name: 'nm_eg', prio: 7, handle: 3 });
      assert.throws(() => addClsBpfFilter(ifindex, 'ingress', egress.prog.fd, { prio: 1 }), (e: unknown) =>
        e instanceof NetlinkError && e.code === 'EEXIST');

      const inList = listClsBpfFilters(ifindex, 'ingress');
      assert.equal(inList.length, 1);
      assert.equal(inList[0]!.progId, ingress.prog.id);
      assert.equal(inList[0]!.name, 'nm_in');
      assert.equal(inList[0]!.directAction, true);
      assert.equal(inList[0]!.protocol, 3);
      assert.deepEqual([inList[0]!.prio, inList[0]!.handle], [1, 1]);
      const egList = listClsBpfFilters(ifindex, 'egress');
      assert.deepEqual(egList.map((f) => [f.progId, f.name, f.prio, f.handle]), [[egress.prog.id, 'nm_eg', 7, 3]]);
    });
    // tc itself sees what we added, in direct-action mode.
    const shown = execFileSync('tc', ['-n', lab.nsA, 'filter', 'show', 'dev', lab.devA, 'egress'], { encoding: 'utf8' });
    assert.match(shown, /bpf .*nm_eg.*direct-action/);
    assert.match(shown, new RegExp(`id ${egress.prog.id}\\b`));

    assert.equal(ingress.count(), 0n);
    assert.equal(ping(lab.nsB, lab.addrA), 3);
    const inCount = ingress.count();
    const egCount = egress.count();
    assert.ok(inCount >= 3n, `ingress saw ${inCount} packets`);
    assert.ok(egCount >= 3n, `egress saw ${egCount} packets`);

    inNetns(lab.nsA, () => {
      assert.equal(delClsBpfFilter(ifindex, 'ingress', { prio: 1, handle: 1 }), true);
      assert.equal(delClsBpfFilter(ifindex, 'egress', { prio: 7, handle: 3 }), true);
      assert.equal(delClsBpfFilter(ifindex, 'egress', { prio: 7, handle: 3 }), false);
      assert.deepEqual(listClsBpfFilters(ifindex, 'ingress'), []);
      assert.deepEqual(listClsBpfFilters(ifindex, 'egress'), []);
    });
    assert.equal(ping(lab.nsB, lab.addrA), 3);
    assert.equal(ingress.count(), inCount, 'no more counting once the filter is gone');
    assert.equal(egress.count(), egCount);
    inNetns(lab.nsA, () => {
      assert.equal(removeClsact(ifindex), true);
      assert.equal(hasClsact(ifindex), false);
      assert.equal(removeClsact(ifindex), false);
    });
  } finally {
    lab.cleanup();
    ingress.close();
    egress.close();
  }
});
