/**
 * netmangle's own pseudo-random generator, so that one seed and one packet sequence give the
 * same decisions in the kernel, in the VM and in every run: xorshift64 (Marsaglia 2003,
 * shifts 13, 7, 17), state kept in the program's per-CPU state map, seeded by splitmix64.
 * Each draw advances the state and yields its upper 32 bits.
 *
 * These functions are the user-space model (seeding, tests, docs); the compiled programs
 * carry the same steps as eBPF instructions (see codegen.ts, emitPrngDraw).
 */

const M64 = (1n << 64n) - 1n;

/** splitmix64 of the seed, never 0 (xorshift's one fixed point). */
export function seedState(seed: number | bigint): bigint {
  let z = (BigInt(seed) + 0x9e3779b97f4a7c15n) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  z = z ^ (z >> 31n);
  return z === 0n ? 0x9e3779b97f4a7c15n : z;
}

/** One xorshift64 step. */
export function nextState(s: bigint): bigint {
  s ^= (s << 13n) & M64;
  s ^= s >> 7n;
  s ^= (s << 17n) & M64;
  return s;
}

/** The 32-bit value a draw yields from the state after the step. */
export function drawValue(state: bigint): number {
  return Number(state >> 32n);
}

/** A seed for runs without --seed: 32 random bits, printed so the run can be repeated. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 0x100000000);
}

/** Threshold for a probability test `draw < threshold` on 32-bit draws; 2^32 means always. */
export function probabilityThreshold(p: number): number {
  return Math.min(0x100000000, Math.round(p * 0x100000000));
}
