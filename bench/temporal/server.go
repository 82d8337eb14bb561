package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/cluster"
	srvconfig "go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/log"
	"go.temporal.io/server/common/membership/static"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/common/primitives"
	sqliteschema "go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
	"go.uber.org/zap"
)

const (
	namespace   = "default"
	clusterName = "active"
	loopback    = "127.0.0.1"
	// historyShards is what the Temporal CLI dev server uses.
	historyShards = 1
	// hostCacheSize is the dev server's host-level mutable state cache size.
	hostCacheSize = 8096
	// visibilityRPS is the dev server's per-namespace visibility RPS limit.
	visibilityRPS = 100
	// busyTimeoutMS is how long an SQLite connection waits for another's lock.
	busyTimeoutMS = 10000
)

// serverOptions selects how the embedded server persists.
type serverOptions struct {
	inMemory bool   // SQLite in memory instead of a temporary file
	journal  string // SQLite journal_mode pragma ("" leaves SQLite's default)
	// busyTimeout makes the server wait for locks held by another connection
	// (the write probe's) instead of failing at once.
	busyTimeout bool
}

// embeddedServer is a one-node Temporal server (frontend, history, matching
// and worker services in this process) on loopback ports, configured as the
// Temporal CLI's `server start-dev` configures its own.
type embeddedServer struct {
	srv      temporal.Server
	hostPort string
	dir      string // temporary directory holding the SQLite file; "" in memory
	dbPath   string
	journal  string
}

// startServer creates the SQLite schema and the default namespace, then
// starts all four services.
func startServer(opts serverOptions) (*embeddedServer, error) {
	s := &embeddedServer{journal: opts.journal}
	if !opts.inMemory {
		dir, err := os.MkdirTemp("", "temporal-peer-")
		if err != nil {
			return nil, fmt.Errorf("create temporary directory: %w", err)
		}
		s.dir = dir
		s.dbPath = filepath.Join(dir, "temporal.db")
	}
	if err := s.start(opts); err != nil {
		s.removeFiles()
		return nil, err
	}
	return s, nil
}

func (s *embeddedServer) start(opts serverOptions) error {
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	s.hostPort = net.JoinHostPort(loopback, strconv.Itoa(ports[0]))
	sqlConf := sqlConfig(opts, s.dbPath)
	if err := prepareDB(sqlConf, !opts.inMemory); err != nil {
		return err
	}
	conf := serverConfig(sqlConf, ports, s.hostPort)
	logger, err := quietLogger()
	if err != nil {
		return err
	}
	authorizer, err := authorization.GetAuthorizerFromConfig(&conf.Global.Authorization)
	if err != nil {
		return fmt.Errorf("create authorizer: %w", err)
	}
	claimMapper, err := authorization.GetClaimMapperFromConfig(&conf.Global.Authorization, logger)
	if err != nil {
		return fmt.Errorf("create claim mapper: %w", err)
	}
	srv, err := temporal.NewServer(
		temporal.WithConfig(conf),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithStaticHosts(staticHosts(ports)),
		temporal.WithLogger(logger),
		temporal.WithAuthorizer(authorizer),
		temporal.WithClaimMapper(func(*srvconfig.Config) authorization.ClaimMapper { return claimMapper }),
		temporal.WithDynamicConfigClient(dynamicConfig()),
	)
	if err != nil {
		return fmt.Errorf("create Temporal server: %w", err)
	}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("start Temporal server: %w", err)
	}
	s.srv = srv
	return nil
}

// quietLogger logs the server's errors to stderr, one line each, without
// stack traces.
func quietLogger() (log.Logger, error) {
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	zc.Encoding = "console"
	zc.EncoderConfig = log.DefaultZapEncoderConfig
	zc.DisableStacktrace = true
	zc.DisableCaller = true
	zc.Sampling = nil
	zl, err := zc.Build()
	if err != nil {
		return nil, fmt.Errorf("build server logger: %w", err)
	}
	return log.NewZapLogger(zl), nil
}

// stop stops the server and deletes the SQLite file.
func (s *embeddedServer) stop() {
	if s.srv != nil {
		if err := s.srv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "temporal-peer: stop server: %v\n", err)
		}
	}
	s.removeFiles()
}

func (s *embeddedServer) removeFiles() {
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// sqlConfig is the dev server's SQLite store: a file opened with mode=rwc, or
// a shared-cache in-memory database under a random name.
func sqlConfig(opts serverOptions, dbPath string) *srvconfig.SQL {
	conf := &srvconfig.SQL{PluginName: sqliteplugin.PluginName, ConnectAttributes: map[string]string{}}
	if opts.inMemory {
		conf.ConnectAttributes["mode"] = "memory"
		conf.ConnectAttributes["cache"] = "shared"
		conf.DatabaseName = strconv.FormatInt(time.Now().UnixNano(), 10)
	} else {
		conf.ConnectAttributes["mode"] = "rwc"
		conf.DatabaseName = dbPath
	}
	if opts.journal != "" {
		conf.ConnectAttributes["journal_mode"] = opts.journal
	}
	if opts.busyTimeout && !opts.inMemory {
		conf.ConnectAttributes["busy_timeout"] = strconv.Itoa(busyTimeoutMS)
	}
	return conf
}

// prepareDB applies the schema to a new file and registers the default
// namespace (the in-memory store sets its schema up when it is opened).
func prepareDB(conf *srvconfig.SQL, file bool) error {
	if file {
		if err := sqliteschema.SetupSchema(conf); err != nil {
			return fmt.Errorf("set up SQLite schema: %w", err)
		}
	}
	ns, err := sqliteschema.NewNamespaceConfig(clusterName, namespace, false, nil)
	if err != nil {
		return fmt.Errorf("build namespace config: %w", err)
	}
	if err := sqliteschema.CreateNamespaces(conf, ns); err != nil {
		return fmt.Errorf("register namespace %q: %w", namespace, err)
	}
	return nil
}

// serverConfig mirrors the dev server's static configuration. ports holds the
// gRPC ports of frontend, history, matching and worker, in that order.
func serverConfig(sqlConf *srvconfig.SQL, ports []int, frontend string) *srvconfig.Config {
	conf := &srvconfig.Config{}
	conf.Global.Membership.MaxJoinDuration = 30 * time.Second
	conf.Global.Membership.BroadcastAddress = loopback
	conf.Persistence.DefaultStore = "sqlite-default"
	conf.Persistence.VisibilityStore = "sqlite-default"
	conf.Persistence.NumHistoryShards = historyShards
	conf.Persistence.DataStores = map[string]srvconfig.DataStore{"sqlite-default": {SQL: sqlConf}}
	conf.ClusterMetadata = &cluster.Config{
		EnableGlobalNamespace:    false,
		FailoverVersionIncrement: 10,
		MasterClusterName:        clusterName,
		CurrentClusterName:       clusterName,
		ClusterInformation: map[string]cluster.ClusterInformation{
			clusterName: {Enabled: true, InitialFailoverVersion: 1, RPCAddress: frontend},
		},
	}
	conf.DCRedirectionPolicy.Policy = "noop"
	conf.Services = map[string]srvconfig.Service{}
	for i, name := range serviceNames() {
		conf.Services[string(name)] = srvconfig.Service{RPC: srvconfig.RPC{GRPCPort: ports[i], BindOnIP: loopback}}
	}
	conf.Archival.History.State = "disabled"
	conf.Archival.Visibility.State = "disabled"
	conf.NamespaceDefaults.Archival.History.State = "disabled"
	conf.NamespaceDefaults.Archival.Visibility.State = "disabled"
	conf.PublicClient.HostPort = frontend
	return conf
}

func serviceNames() []primitives.ServiceName {
	return []primitives.ServiceName{
		primitives.FrontendService, primitives.HistoryService,
		primitives.MatchingService, primitives.WorkerService,
	}
}

// staticHosts makes each service find the others at fixed addresses, without
// a membership ring, as the dev server does.
func staticHosts(ports []int) map[primitives.ServiceName]static.Hosts {
	hosts := map[primitives.ServiceName]static.Hosts{}
	for i, name := range serviceNames() {
		hosts[name] = static.SingleLocalHost(net.JoinHostPort(loopback, strconv.Itoa(ports[i])))
	}
	return hosts
}

// dynamicConfig holds the dev server's non-default dynamic settings that
// matter here.
func dynamicConfig() dynamicconfig.StaticClient {
	return dynamicconfig.StaticClient{
		dynamicconfig.HistoryCacheHostLevelMaxSize.Key():                 hostCacheSize,
		dynamicconfig.FrontendMaxNamespaceVisibilityRPSPerInstance.Key(): visibilityRPS,
	}
}

// freePorts returns n distinct free TCP ports on loopback. The listeners are
// held until all are chosen so that no port is returned twice.
func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(loopback, "0"))
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// dbBytes is the size of the SQLite file plus its write-ahead log; 0 in memory.
func (s *embeddedServer) dbBytes() int64 {
	if s.dbPath == "" {
		return 0
	}
	var total int64
	for _, p := range []string{s.dbPath, s.dbPath + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			total += fi.Size()
		}
	}
	return total
}

// persistenceLabel describes the store for the report.
func (s *embeddedServer) persistenceLabel() string {
	mode := s.journal
	if mode == "" {
		mode = "SQLite default journal"
	}
	if s.dbPath == "" {
		return "SQLite in memory (shared cache), one node"
	}
	return fmt.Sprintf("SQLite file (journal_mode=%s), one node", mode)
}
