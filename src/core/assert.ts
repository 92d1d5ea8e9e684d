/**
 * Assertions guard invariants, not input. A failed assertion is a bug: the process must stop
 * rather than go on with state it can no longer trust (TIGER_STYLE). Input is validated at the
 * boundary and reported with a HindsightError instead.
 */
export class AssertionFailure extends Error {
  constructor(message: string) {
    super(`assertion failed: ${message}`);
    this.name = 'AssertionFailure';
  }
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionFailure(message);
}

export function unreachable(value: never, what: string): never {
  throw new AssertionFailure(`unreachable ${what}: ${String(value)}`);
}
