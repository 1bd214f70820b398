package clusterbench

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vigil-media/vigil/internal/redisserver"
)

// The nodes' Redis: a private redis-server, and a client that reads
// what the nodes wrote there.

// startRedis starts a private redis-server in dir, pinned to cpu (-1:
// not pinned), and a client of it.
func startRedis(ctx context.Context, bin string, cpu int, dir string) (*redisserver.Server, *redis.Client, error) {
	opts := redisserver.Options{Path: bin, Dir: dir, Timeout: 10 * time.Second}
	if ts, err := exec.LookPath("taskset"); err == nil && cpu >= 0 {
		opts.Prefix = []string{ts, "-c", strconv.Itoa(cpu)}
	}
	srv, err := redisserver.Start(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	return srv, newRedisClient(srv.Addr()), nil
}

func newRedisClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:        addr,
		DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
	})
}

// unregistered is the nodes of ids with no vigil:node:ID key: not (yet)
// members of the cluster.
func unregistered(ctx context.Context, rdb *redis.Client, ids []string) ([]string, error) {
	var missing []string
	for _, id := range ids {
		n, err := rdb.Exists(ctx, "vigil:node:"+id).Result()
		if err != nil {
			return nil, err
		}
		if n != 1 {
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// roomOwner is the node that owns room (vigil:room:NAME owner); "" when
// the room has none.
func roomOwner(ctx context.Context, rdb *redis.Client, room string) (string, error) {
	owner, err := rdb.HGet(ctx, "vigil:room:"+room, "owner").Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("owner of room %s: %w", room, err)
	}
	return owner, nil
}
