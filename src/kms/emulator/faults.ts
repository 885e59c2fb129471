/** Fault injection settings for one operation. Rates are probabilities from 0 to 1. */
export interface FaultRule {
  /** Probability of answering `errorName` with `errorStatus` without running the operation. */
  errorRate?: number;
  /** Error name, KMSInternalException by default. */
  errorName?: string;
  /** HTTP status of the injected error, 500 by default. */
  errorStatus?: number;
  /** Probability of destroying the socket without running the operation. Such requests are left out of the request log. */
  resetRate?: number;
  /** Probability of running the operation at once but sending its response `stallMs` later. */
  stallRate?: number;
  /** Stall duration in milliseconds, 30000 by default. */
  stallMs?: number;
}

export type Fault =
  | { kind: 'error'; name: string; status: number }
  | { kind: 'reset' }
  | { kind: 'stall'; ms: number };

/**
 * Draws the fault for one request. The rule for the operation replaces the
 * '*' rule rather than adding to it. One draw decides, so the rates add up:
 * errorRate 0.1 and resetRate 0.1 fault 20% of requests.
 */
export function drawFault(faults: Record<string, FaultRule> | undefined, operation: string): Fault | undefined {
  if (faults === undefined) return undefined;
  const rule = faults[operation] ?? faults['*'];
  if (rule === undefined) return undefined;

  const draw = Math.random();
  const errorRate = rule.errorRate ?? 0;
  const resetRate = rule.resetRate ?? 0;
  const stallRate = rule.stallRate ?? 0;
  if (draw < errorRate) {
    return { kind: 'error', name: rule.errorName ?? 'KMSInternalException', status: rule.errorStatus ?? 500 };
  }
  if (draw < errorRate + resetRate) return { kind: 'reset' };
  if (draw < errorRate + resetRate + stallRate) return { kind: 'stall', ms: rule.stallMs ?? 30_000 };
  return undefined;
}

/** Throws unless `faults` is a map of operation names to valid FaultRules. */
export function validateFaults(faults: unknown): asserts faults is Record<string, FaultRule> {
  if (typeof faults !== 'object' || faults === null || Array.isArray(faults)) {
    throw new Error('faults must be an object that maps operation names (or "*") to fault rules.');
  }
  for (const [operation, rule] of Object.entries(faults as Record<string, unknown>)) {
    if (typeof rule !== 'object' || rule === null) throw new Error(`faults.${operation} must be an object.`);
    const fields = rule as Record<string, unknown>;
    for (const name of ['errorRate', 'resetRate', 'stallRate']) {
      const value = fields[name];
      if (value !== undefined && (typeof value !== 'number' || !(value >= 0 && value <= 1))) {
        throw new Error(`faults.${operation}.${name} must be a number from 0 to 1.`);
      }
    }
    const status = fields.errorStatus;
    if (status !== undefined && (typeof status !== 'number' || !Number.isInteger(status) || status < 400 || status > 599)) {
      throw new Error(`faults.${operation}.errorStatus must be an HTTP error status from 400 to 599.`);
    }
    const stallMs = fields.stallMs;
    if (stallMs !== undefined && (typeof stallMs !== 'number' || !(stallMs >= 0))) {
      throw new Error(`faults.${operation}.stallMs must be a non-negative number of milliseconds.`);
    }
    if (fields.errorName !== undefined && typeof fields.errorName !== 'string') throw new Error(`faults.${operation}.errorName must be a string.`);
  }
}
