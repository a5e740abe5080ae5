import { NetmangleError } from '../errors.js';

/**
 * A program the VM refuses or stops: a memory access out of bounds, a pointer used as a
 * number, a helper the VM lacks. The message names the instruction (slot index, as the
 * kernel's verifier counts, and its text) whenever there is one.
 */
export class VmError extends NetmangleError {
  /** Slot index of the offending instruction, or -1 when the error is about the whole program. */
  readonly slot: number;
  constructor(message: string, slot = -1, hint?: string) {
    super(message, { hint: hint ?? 'the kernel verifier would refuse this program too; check the program that produced it' });
    this.slot = slot;
  }
}
