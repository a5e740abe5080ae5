/**
 * The lab as a library, for tests, benchmarks and scripts:
 *
 *     await using lab = await Lab.up(undefined, { name: 'mytest' });   // h1 ── sw ── h2
 *     const r = await lab.exec('h1', ['ping', '-c', '1', lab.address('h2')]);
 *
 * or `await withLab(topology, async (lab) => { … })`. Either way the lab is taken down when
 * the block ends, even when it throws.
 */
export { Lab, withLab, LabExistsError, DEFAULT_LAB_NAME, labBuilderAlive } from './lab.js';
export type { TopologyInput, LabUpOptions, ExecOptions, InterfaceInfo } from './lab.js';
export {
  DEFAULT_TOPOLOGY,
  TopologyError,
  parseTopology,
  loadTopology,
  validateTopology,
  namespaceName,
  checkLabName,
} from './topology.js';
export type { TopologySpec, HostSpec, EndSpec, LinkSpec, TopologyPlan, PlannedHost, PlannedLink, PlannedEnd, PlannedRoute } from './topology.js';
export { run, runChecked, listNamespaces, type RunResult, type RunOptions } from './run.js';
export * from './measure.js';
export { applyRule, ruleCommandAvailable, RuleUnavailableError, type Hook, type AppliedRule, type ApplyRuleOptions } from './experiments.js';
