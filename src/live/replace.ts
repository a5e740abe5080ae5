/**
 * New rules in the place of attached ones, on the same hooks, without a moment where the hook
 * is empty or holds both: each new program is loaded first (a verifier refusal changes
 * nothing), then swapped into the existing BPF link with BPF_LINK_UPDATE (tcx links 6.6+,
 * XDP links 5.9+). Netlink attachments and delay lines have no such swap; there the caller
 * detaches and attaches.
 */
import { compileGroup } from '../compiler/index.js';
import { updateLink } from '../kernel/link.js';
import { lookupField } from '../rules/catalog.js';
import type { RuleGroup } from '../rules/ast.js';
import { holdPlan, loadCompiled, type LiveSession, type LoadedProgram } from './index.js';

/** Whether replaceInLinks can take `groups` in the place of the session's: same hooks, all on links, no delay line on either side, no device setting to carry over. */
export function canReplaceInLinks(session: LiveSession, groups: RuleGroup[]): boolean {
  if (session.groups.length !== groups.length) return false;
  return session.groups.every((old, i) => {
    const g = groups[i]!;
    const a = old.attachment;
    return a.link !== undefined && !a.detached && old.delayLine === undefined && old.restoreGsoMaxSegs === undefined
      && a.dev === g.dev && a.hook === g.hook && a.netns === g.netns && holdPlan(g).specs.length === 0;
  });
}

/**
 * Compiles and loads `groups`, then swaps each program into its predecessor's link; the old
 * programs and maps are closed. If a swap fails, the ones done are swapped back and the new
 * programs closed, so the session is as it was. Call canReplaceInLinks first.
 */
export function replaceInLinks(session: LiveSession, groups: RuleGroup[], seed: number): void {
  const loaded: LoadedProgram[] = [];
  try {
    for (const g of groups) loaded.push(loadCompiled(compileGroup(g, { seed, lookupField })));
  } catch (err) {
    for (const l of loaded) l.close();
    throw err;
  }
  const swapped: number[] = [];
  try {
    session.groups.forEach((old, i) => {
      updateLink(old.attachment.link!, loaded[i]!.prog, { expectedOld: old.loaded.prog });
      swapped.push(i);
    });
  } catch (err) {
    for (const i of swapped.reverse()) {
      const old = session.groups[i]!;
      updateLink(old.attachment.link!, old.loaded.prog, { expectedOld: loaded[i]!.prog });
    }
    for (const l of loaded) l.close();
    throw err;
  }
  session.groups.forEach((old, i) => {
    old.loaded.close();
    old.loaded = loaded[i]!;
    // The attachment now carries the new program (its link was updated in place).
    (old.attachment as { progId: number }).progId = loaded[i]!.prog.id;
  });
}
