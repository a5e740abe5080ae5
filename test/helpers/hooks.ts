/**
 * What is attached at a hook, asked the way this kernel can answer: the XDP state through
 * netlink, tcx programs with BPF_PROG_QUERY where the probe found tcx (a kernel without it
 * refuses the query with EINVAL), and cls_bpf filters on a clsact qdisc (the netlink tc path).
 */
import { ifindexByName } from '../../src/kernel/iface.js';
import { queryProgs } from '../../src/kernel/info.js';
import { inNetns } from '../../src/kernel/netns.js';
import { listClsBpfFilters, xdpQueryNetlink } from '../../src/kernel/rtnetlink.js';
import { kernelProbe } from './kernel.js';

export type HookName = 'xdp' | 'ingress' | 'egress';

/**
 * Program ids at `hook` of `dev` in namespace `netns` (undefined: ours), by whichever mechanism
 * could hold them. XDP reports an attached program twice (the single id and the per-mode id).
 */
export function programsOnHook(netns: string | undefined, dev: string, hook: HookName): number[] {
  return inNetns(netns, () => {
    const ifindex = ifindexByName(dev);
    if (hook === 'xdp') {
      const s = xdpQueryNetlink(ifindex);
      return [s.progId, s.drvProgId, s.skbProgId].filter((x): x is number => x !== undefined);
    }
    const tcx = kernelProbe().features.tcx ? queryProgs(ifindex, hook === 'ingress' ? 'tcx_ingress' : 'tcx_egress').progIds : [];
    const cls = listClsBpfFilters(ifindex, hook).map((f) => f.progId ?? 0);
    return [...tcx, ...cls];
  });
}
