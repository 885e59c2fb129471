import { createHash } from 'node:crypto';

import { KmsError } from './errors.js';
import type { Input } from './input.js';
import type { CloudTrailEvent, RequestLog } from './request-log.js';

/** X-Amz-Target prefix of the CloudTrail API (AWS JSON 1.1, API version 2013-11-01). */
export const CLOUDTRAIL_TARGET_PREFIX = 'CloudTrail_20131101.';

/** CloudTrail returns at most 50 events per LookupEvents page, and 50 when MaxResults is unset. */
const MAX_RESULTS = 50;

const ATTRIBUTE_KEYS = new Set(['EventId', 'EventName', 'ReadOnly', 'Username', 'ResourceType', 'ResourceName', 'EventSource', 'AccessKeyId']);

/** One event in a LookupEvents response. `EventTime` is in epoch seconds, as AWS JSON 1.1 sends timestamps. */
export interface LookupEvent {
  EventId: string;
  EventName: string;
  ReadOnly: string;
  AccessKeyId: string;
  EventTime: number;
  EventSource: string;
  Username: string;
  Resources: Array<{ ResourceType: string; ResourceName: string }>;
  CloudTrailEvent: string;
}

interface LookupFilter {
  attribute: { key: string; value: string } | undefined;
  startMs: number;
  endMs: number;
}

const invalid = (name: string, message: string) => new KmsError(name, message);

/** The IAM user name in the event's ARN, which in the emulator is the access key id. */
function usernameOf(event: CloudTrailEvent): string {
  return event.userIdentity.arn.slice(event.userIdentity.arn.lastIndexOf('/') + 1);
}

function matchesAttribute(event: CloudTrailEvent, attribute: { key: string; value: string }): boolean {
  const { key, value } = attribute;
  switch (key) {
    case 'EventId':
      return event.eventID === value;
    case 'EventName':
      return event.eventName === value;
    case 'ReadOnly':
      return String(event.readOnly) === value;
    case 'Username':
      return usernameOf(event) === value;
    case 'ResourceType':
      return event.resources.some((resource) => resource.type === value);
    case 'ResourceName':
      return event.resources.some((resource) => resource.ARN === value);
    case 'EventSource':
      return event.eventSource === value;
    case 'AccessKeyId':
      return event.userIdentity.accessKeyId === value;
    default:
      return false;
  }
}

function matches(event: CloudTrailEvent, filter: LookupFilter): boolean {
  const time = Date.parse(event.eventTime);
  if (time < filter.startMs || time > filter.endMs) return false;
  return filter.attribute === undefined || matchesAttribute(event, filter.attribute);
}

function toLookupEvent(event: CloudTrailEvent): LookupEvent {
  return {
    EventId: event.eventID,
    EventName: event.eventName,
    ReadOnly: String(event.readOnly),
    AccessKeyId: event.userIdentity.accessKeyId,
    EventTime: Date.parse(event.eventTime) / 1000,
    EventSource: event.eventSource,
    Username: usernameOf(event),
    Resources: event.resources.map((resource) => ({ ResourceType: resource.type, ResourceName: resource.ARN })),
    CloudTrailEvent: JSON.stringify(event),
  };
}

function parseAttribute(input: Input): LookupFilter['attribute'] {
  const attributes = input.LookupAttributes;
  if (attributes === undefined || attributes === null) return undefined;
  if (!Array.isArray(attributes) || attributes.length > 1) {
    throw invalid('InvalidLookupAttributesException', 'LookupAttributes must be a list of at most one {AttributeKey, AttributeValue}.');
  }
  if (attributes.length === 0) return undefined;
  const entry = attributes[0] as { AttributeKey?: unknown; AttributeValue?: unknown } | null;
  const key = entry?.AttributeKey;
  const value = entry?.AttributeValue;
  if (typeof key !== 'string' || !ATTRIBUTE_KEYS.has(key)) {
    throw invalid('InvalidLookupAttributesException', `AttributeKey must be one of ${[...ATTRIBUTE_KEYS].join(', ')}.`);
  }
  if (typeof value !== 'string' || value.length < 1 || value.length > 2000) {
    throw invalid('InvalidLookupAttributesException', 'AttributeValue must be a string of 1 to 2000 characters.');
  }
  return { key, value };
}

function parseTime(value: unknown, name: string, fallbackMs: number): number {
  if (value === undefined || value === null) return fallbackMs;
  if (typeof value !== 'number' || !Number.isFinite(value)) throw invalid('InvalidTimeRangeException', `${name} must be a time in epoch seconds.`);
  return value * 1000;
}

function parseMaxResults(value: unknown): number {
  if (value === undefined || value === null) return MAX_RESULTS;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_RESULTS) {
    throw invalid('InvalidMaxResultsException', `MaxResults must be an integer from 1 to ${MAX_RESULTS}.`);
  }
  return value;
}

/**
 * Identifies the request parameters that a NextToken belongs to, since a
 * token is valid only with the same parameters. An unset EndTime stays
 * unset here, so that it does not change from page to page.
 */
function filterDigest(input: Input): string {
  const parameters = [input.LookupAttributes ?? null, input.StartTime ?? null, input.EndTime ?? null, input.EventCategory ?? null];
  return createHash('sha256').update(JSON.stringify(parameters)).digest('base64url').slice(0, 16);
}

function encodeToken(sequence: number, digest: string): string {
  return Buffer.from(JSON.stringify({ sequence, digest })).toString('base64url');
}

/** Decodes a NextToken to the sequence number of the next event to examine. */
function decodeToken(value: unknown, digest: string): number {
  const fail = () => invalid('InvalidNextTokenException', 'NextToken is invalid, or was issued for other LookupAttributes, StartTime or EndTime.');
  if (typeof value !== 'string') throw fail();
  let token: { sequence?: unknown; digest?: unknown };
  try {
    token = JSON.parse(Buffer.from(value, 'base64url').toString('utf8')) as typeof token;
  } catch {
    throw fail();
  }
  if (token.digest !== digest || typeof token.sequence !== 'number' || !Number.isInteger(token.sequence) || token.sequence < 0) throw fail();
  return token.sequence;
}

/**
 * Answers CloudTrail LookupEvents from the emulator's request log: events
 * that match the one optional lookup attribute and fall within
 * `[StartTime, EndTime]` (both inclusive, as in CloudTrail), newest first.
 * Events the ring has dropped since a NextToken was issued are skipped.
 */
export function lookupEvents(log: RequestLog, input: Input, nowMs: number): { Events: LookupEvent[]; NextToken?: string } {
  if (input.EventCategory !== undefined && input.EventCategory !== null && input.EventCategory !== 'insight') {
    throw invalid('InvalidEventCategoryException', 'EventCategory must be "insight".');
  }
  const filter: LookupFilter = {
    attribute: parseAttribute(input),
    startMs: parseTime(input.StartTime, 'StartTime', 0),
    endMs: parseTime(input.EndTime, 'EndTime', nowMs),
  };
  if (filter.endMs < filter.startMs) throw invalid('InvalidTimeRangeException', 'EndTime must not be before StartTime.');
  const maxResults = parseMaxResults(input.MaxResults);
  const digest = filterDigest(input);
  // The emulator records management events only, so an Insights lookup finds nothing.
  if (input.EventCategory === 'insight') return { Events: [] };

  const { events, firstSequence } = log.snapshot();
  let index = events.length - 1;
  if (input.NextToken !== undefined && input.NextToken !== null) {
    index = Math.min(index, decodeToken(input.NextToken, digest) - firstSequence);
  }
  const page: LookupEvent[] = [];
  for (; index >= 0; index -= 1) {
    const event = events[index]!;
    if (!matches(event, filter)) continue;
    if (page.length === maxResults) return { Events: page, NextToken: encodeToken(firstSequence + index, digest) };
    page.push(toLookupEvent(event));
  }
  return { Events: page };
}

/**
 * Admits at most `rate` LookupEvents requests in any one-second window, as
 * CloudTrail limits LookupEvents to two requests per second per account and
 * Region. A rate of 0 or Infinity admits every request.
 */
export class LookupRateLimit {
  private readonly admitted: number[] = [];

  constructor(public rate: number) {}

  admit(nowMs: number): boolean {
    if (this.rate === 0 || this.rate === Infinity) return true;
    while (this.admitted.length > 0 && this.admitted[0]! <= nowMs - 1000) this.admitted.shift();
    if (this.admitted.length >= this.rate) return false;
    this.admitted.push(nowMs);
    return true;
  }
}
