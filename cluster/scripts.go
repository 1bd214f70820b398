package cluster

import "github.com/redis/go-redis/v9"

// The Lua scripts: each one is a read-decide-write that must not
// interleave with another node's. Script.Run sends EVALSHA and falls back
// to EVAL when Redis does not know the script (after a restart).

// renewScript registers or renews a node and reads the instance key,
// creating it if missing.
//
//	KEYS: node key, nodes set, instance key
//	ARGV: id, lease ms, fresh instance value, url, rooms, participants,
//	      started ms, sig
//	returns {instance value, 1 if this call created it else 0,
//	         1 if the node key existed before else 0}
var renewScript = redis.NewScript(`
local inst = redis.call('GET', KEYS[3])
local created = 0
if not inst then
	redis.call('SET', KEYS[3], ARGV[3])
	inst = ARGV[3]
	created = 1
end
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], 'url', ARGV[4], 'rooms', ARGV[5],
	'participants', ARGV[6], 'started', ARGV[7], 'sig', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return {inst, created, existed}
`)

// pruneScript removes a node id from the nodes set if its key is gone.
//
//	KEYS: node key, nodes set
//	ARGV: id
var pruneScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
return redis.call('SREM', KEYS[2], ARGV[1])
`)

// createScript adds a room unless it exists, if its owner is live.
//
//	KEYS: room key, rooms set, owner's node key
//	ARGV: name, kind, max_participants, auto_record, owner, epoch, created,
//	      instance
//	returns 1 created, 0 exists, -1 owner not live
var createScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'kind', ARGV[2], 'max_participants', ARGV[3],
	'auto_record', ARGV[4], 'owner', ARGV[5], 'epoch', ARGV[6],
	'created', ARGV[7], 'instance', ARGV[8])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
`)

// deleteScript removes a room if owner still owns it.
//
//	KEYS: room key, rooms set
//	ARGV: name, owner
//	returns 1 deleted, 0 not found, -1 another owner
var deleteScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
`)

// rehomeScript moves a room from a dead owner to a live one: only if the
// room exists, its owner is still the dead one, the dead one's key is
// still gone and the new one's key exists.
//
//	KEYS: room key, dead owner's node key, new owner's node key
//	ARGV: dead owner, new owner
//	returns the new epoch, 0 if the room or its owner changed (or the
//	dead owner came back), -1 if the new owner is not live
var rehomeScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'owner') or '') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
`)
