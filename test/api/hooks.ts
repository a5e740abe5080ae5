/**
 * What is on a hook, asked of the kernel the way the probe says netmangle attaches there: BPF_PROG_QUERY
 * for tcx, the cls_bpf filter listing and IFLA_XDP for netlink. Both are asked, so a program left by
 * either path is seen.
 */
import { queryProgs } from '../../src/kernel/info.js';
import { listLinks } from '../../src/kernel/iface.js';
import { inNetns } from '../../src/kernel/netns.js';
import { getLink, listClsBpfFilters, xdpQueryNetlink } from '../../src/kernel/rtnetlink.js';

export type Hook = 'xdp' | 'ingress' | 'egress';

/** Program ids attached at `hook` of `dev` in `netns` (a name or a path). */
export function programsOn(netns: string, dev: string, hook: Hook): number[] {
  return inNetns(netns, () => {
    const link = getLink(dev);
    if (!link) throw new Error(`no ${dev} in ${netns}`);
    if (hook === 'xdp') {
      const s = xdpQueryNetlink(link.ifindex);
      return [...new Set([s.progId, s.drvProgId, s.skbProgId].filter((x): x is number => x !== undefined))];
    }
    const tcx = queryProgs(link.ifindex, hook === 'ingress' ? 'tcx_ingress' : 'tcx_egress').progIds;
    const cls = listClsBpfFilters(link.ifindex, hook).map((f) => f.progId ?? 0);
    return [...tcx, ...cls];
  });
}

/** Every program on any hook of every interface in `netns`. */
export function programsIn(netns: string): number[] {
  return listLinks(netns).flatMap((l) => (['xdp', 'ingress', 'egress'] as const).flatMap((h) => programsOn(netns, l.name, h)));
}

/** Interfaces in `netns` (the delay line's TAPs are called nmdl…). */
export function interfacesIn(netns: string): string[] {
  return listLinks(netns).map((l) => l.name);
}
