// Generated from relay/closecodes.py by: python -m relay close-codes --js — do not edit.
export const CLOSE_CODES = [
  {"code": 1000, "name": "NORMAL", "reason": "normal closure", "reconnect": "no"},
  {"code": 1001, "name": "GOING_AWAY", "reason": "going away", "reconnect": "yes"},
  {"code": 1002, "name": "PROTOCOL_ERROR", "reason": "protocol error", "reconnect": "no"},
  {"code": 1003, "name": "UNSUPPORTED_DATA", "reason": "binary frames are not supported", "reconnect": "no"},
  {"code": 1007, "name": "INVALID_PAYLOAD", "reason": "invalid UTF-8", "reconnect": "no"},
  {"code": 1008, "name": "POLICY_VIOLATION", "reason": "policy violation", "reconnect": "yes"},
  {"code": 1009, "name": "MESSAGE_TOO_BIG", "reason": "message too big", "reconnect": "no"},
  {"code": 1011, "name": "INTERNAL_ERROR", "reason": "internal error", "reconnect": "yes"},
  {"code": 1012, "name": "SERVICE_RESTART", "reason": "service restart", "reconnect": "yes"},
  {"code": 1013, "name": "TRY_AGAIN_LATER", "reason": "try again later", "reconnect": "yes"},
  {"code": 4001, "name": "UNAUTHORIZED", "reason": "unauthorized", "reconnect": "new-token"},
  {"code": 4003, "name": "FORBIDDEN", "reason": "forbidden", "reconnect": "no"},
  {"code": 4008, "name": "TOO_MANY_CONNECTIONS", "reason": "too many connections", "reconnect": "yes"},
  {"code": 4009, "name": "SLOW_CONSUMER", "reason": "slow consumer", "reconnect": "yes"},
  {"code": 4010, "name": "AUTH_TIMEOUT", "reason": "auth timeout", "reconnect": "yes"},
  {"code": 4011, "name": "HEARTBEAT_TIMEOUT", "reason": "heartbeat timeout", "reconnect": "yes"},
];
