# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_tako_server_global_optspecs
    string join \n socket= port= tls-port= listen= data-dir= config= workers= proxy-user= app-user= app-uid-range= deploy-user= trusted-proxy= proxy-protocol= no-acme acme-staging acme-email= acme-directory= acme-ca-root= renewal-interval-hours= instance-port-offset= cache-size= no-compression sandbox= client-max-connections= client-max-requests= client-rate= client-rate-burst= test-h2-timeouts-ms= h/help V/version
end

function __fish_tako_server_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_tako_server_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_tako_server_using_subcommand
    set -l cmd (__fish_tako_server_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c tako-server -n "__fish_tako_server_needs_command" -l socket -d 'Management socket path' -r -F
complete -c tako-server -n "__fish_tako_server_needs_command" -l port -d 'Plain HTTP port [default: 80]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l tls-port -d 'HTTPS port [default: 443]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l listen -d 'IP address to bind, repeatable; each gets an HTTP and an HTTPS listener [default: 0.0.0.0 and ::]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l data-dir -d 'Data root' -r -F
complete -c tako-server -n "__fish_tako_server_needs_command" -l config -d 'Config file [default: <data-dir>/server-config.toml if it exists]' -r -F
complete -c tako-server -n "__fish_tako_server_needs_command" -l workers -d 'Proxy worker processes, 1-256 [default: number of usable CPUs]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l proxy-user -d 'User of the proxy workers (root only) [default: tako-proxy]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l app-user -d 'Group every app process also carries, the primary group of this user; apps run under uids of their own (root only) [default: tako-app]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l app-uid-range -d 'Uids (and gids) given to apps, one each, skipping any that exist in passwd or group (root only) [default: 61184-65519]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l deploy-user -d 'User the Tako CLI logs in as; its primary group owns the socket (root only) [default: tako]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l trusted-proxy -d 'Peer whose forwarded headers are believed, repeatable; replaces the default list [default: 127.0.0.0/8, ::1/128]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l proxy-protocol -d 'Listener (IP:PORT, or `all`) whose connections start with a PROXY protocol v1 or v2 header from a trusted proxy, repeatable; replaces the config file\'s list [default: none]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l acme-email -d 'Contact for a new ACME account ("mailto:" is added) [default: none]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l acme-directory -d 'ACME directory URL; overrides --acme-staging [default: Let\'s Encrypt production]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l acme-ca-root -d 'Extra trusted root for the HTTPS connection to the ACME directory [default: none]' -r -F
complete -c tako-server -n "__fish_tako_server_needs_command" -l renewal-interval-hours -d 'Certificate renewal check period in hours, 1-8760' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l instance-port-offset -d 'Added to every app instance port, 0-45552' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l cache-size -d 'Response cache budget in bytes for the whole server, split evenly over the workers; 0 turns the cache off [default: 268435456]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l sandbox -d 'Proxy worker sandbox (Landlock, seccomp, rlimits): strict refuses to start on a kernel without it, best-effort (the default) warns once and goes on, off applies none' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l client-max-connections -d 'Open connections per client address over all workers, 0-1000000, 0 = no cap; a trusted proxy\'s own connections are not capped [default: 256]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l client-max-requests -d 'Requests in flight per client address over all workers (HTTP/2 streams included), 0-1000000, 0 = no cap [default: 512]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l client-rate -d 'Requests per second per client address, on average, 0-1000000; 0 = no rate limit [default: 0]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l client-rate-burst -d 'Requests a client address may send at once above --client-rate, 1-1000000 [default: 100]' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l test-h2-timeouts-ms -d 'Test only: the HTTP/2 preface, idle and body-idle timers in milliseconds (`PREFACE,IDLE,BODY`; BODY also bounds how long a response may wait on a shut flow-control window), so the integration tests need not wait a minute for a limit' -r
complete -c tako-server -n "__fish_tako_server_needs_command" -l no-acme -d 'No ACME account, issuance, renewal or challenge answers'
complete -c tako-server -n "__fish_tako_server_needs_command" -l acme-staging -d 'Use the Let\'s Encrypt staging directory'
complete -c tako-server -n "__fish_tako_server_needs_command" -l no-compression -d 'Send every response as the app made it: no brotli or gzip on the fly and no precompressed static files [default: compression on]'
complete -c tako-server -n "__fish_tako_server_needs_command" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_needs_command" -s V -l version -d 'Print version'
complete -c tako-server -n "__fish_tako_server_needs_command" -f -a "ctl" -d 'Talk to a running server over its management socket'
complete -c tako-server -n "__fish_tako_server_needs_command" -f -a "sandbox-selftest" -d 'Apply the proxy worker\'s sandbox to this process, try what it must refuse and print the outcomes as JSON (tests and diagnosis)'
complete -c tako-server -n "__fish_tako_server_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -l socket -d 'Management socket of the server (its --socket)' -r -F
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -l data-dir -d 'Data directory of the server (its --data-dir); `logs` reads the app logs below it' -r -F
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -l json -d 'Print the server\'s answer line as it came (one line of JSON) instead of a table'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "status" -d 'One app: state, healthy instances, routes, instances and certificates'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "list" -d 'Every app: version, state, healthy/total instances, routes, uptime'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "routes" -d 'Every app\'s routes'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "server-info" -d 'The running server\'s settings, version, role and mode'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "deploy" -d 'Deploy a release: start its instances, health-check them, then switch traffic'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "stop" -d 'Stop an app\'s instances; it stays stopped across restarts until reload or deploy'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "delete" -d 'Stop an app and forget it (its release files stay on disk)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "reload" -d 'Rolling restart of an app\'s instances (also starts a stopped app and applies secrets)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "rollback" -d 'Deploy an earlier release of an app again'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "releases" -d 'An app\'s releases, newest first, the running one marked *'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "update-secrets" -d 'Merge secrets into an app\'s env (values from --secrets-file or --env, never argv); `reload` applies them'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "restart-workers" -d 'Rolling restart of the proxy workers, without dropping a request'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "processes" -d 'The server\'s processes (role, pid, user, state) and the app instances'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "reload-certs" -d 'Read <data-dir>/certs/ again'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "logs" -d 'Show an app\'s log (its output, from <data-dir>/apps/<app>/shared/logs/)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "enter-upgrading" -d 'Enter upgrade mode: deploys and other changes are refused until exit-upgrading'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "exit-upgrading" -d 'Leave upgrade mode'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "upgrade" -d 'Replace the running server in place with the binary at its path, keeping the listeners'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "raw" -d 'Send one raw JSON line (no hello) and print the raw response; `-` reads the line from stdin (for lines that carry secrets)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and not __fish_seen_subcommand_from status list routes server-info deploy stop delete reload rollback releases update-secrets restart-workers processes reload-certs logs enter-upgrading exit-upgrading upgrade raw help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from routes" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from server-info" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l version -d 'Release version, the name of its directory under releases/' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l path -d 'Release directory: <data-dir>/apps/<app>/releases/<version>, holding app.json' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l route -d 'Route the app serves: a host (web.example.com), host/path/* or *.domain; repeatable, at least one' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l env-file -l secrets-file -d 'Read KEY=VALUE lines from a file (`-`: stdin); `#` comments and blank lines are skipped. Repeatable; later files win' -r -F
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l env -d 'Take KEY\'s value from ctl\'s own environment variable of that name. Repeatable; wins over the files. `--env KEY=VALUE` is refused' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l instances -d 'Instances kept running, 0-32; 0 starts one on the first request and stops it when idle' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l idle-timeout -d 'Seconds without requests before an on-demand instance (--instances 0) stops' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from stop" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from reload" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from rollback" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from releases" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from update-secrets" -l env-file -l secrets-file -d 'Read KEY=VALUE lines from a file (`-`: stdin); `#` comments and blank lines are skipped. Repeatable; later files win' -r -F
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from update-secrets" -l env -d 'Take KEY\'s value from ctl\'s own environment variable of that name. Repeatable; wins over the files. `--env KEY=VALUE` is refused' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from update-secrets" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from restart-workers" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from processes" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from reload-certs" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from logs" -s n -l lines -d 'How many of the last lines to print first' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from logs" -s f -l follow -d 'Keep printing new lines as they are written, across log rotations (Ctrl-C ends)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from logs" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from enter-upgrading" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from exit-upgrading" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from upgrade" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from raw" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "status" -d 'One app: state, healthy instances, routes, instances and certificates'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "list" -d 'Every app: version, state, healthy/total instances, routes, uptime'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "routes" -d 'Every app\'s routes'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "server-info" -d 'The running server\'s settings, version, role and mode'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "deploy" -d 'Deploy a release: start its instances, health-check them, then switch traffic'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "stop" -d 'Stop an app\'s instances; it stays stopped across restarts until reload or deploy'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Stop an app and forget it (its release files stay on disk)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "reload" -d 'Rolling restart of an app\'s instances (also starts a stopped app and applies secrets)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "rollback" -d 'Deploy an earlier release of an app again'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "releases" -d 'An app\'s releases, newest first, the running one marked *'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "update-secrets" -d 'Merge secrets into an app\'s env (values from --secrets-file or --env, never argv); `reload` applies them'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "restart-workers" -d 'Rolling restart of the proxy workers, without dropping a request'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "processes" -d 'The server\'s processes (role, pid, user, state) and the app instances'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "reload-certs" -d 'Read <data-dir>/certs/ again'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "logs" -d 'Show an app\'s log (its output, from <data-dir>/apps/<app>/shared/logs/)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "enter-upgrading" -d 'Enter upgrade mode: deploys and other changes are refused until exit-upgrading'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "exit-upgrading" -d 'Leave upgrade mode'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "upgrade" -d 'Replace the running server in place with the binary at its path, keeping the listeners'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "raw" -d 'Send one raw JSON line (no hello) and print the raw response; `-` reads the line from stdin (for lines that carry secrets)'
complete -c tako-server -n "__fish_tako_server_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tako-server -n "__fish_tako_server_using_subcommand sandbox-selftest" -l data-dir -d 'Data root whose `apps/` the sandbox leaves readable' -r -F
complete -c tako-server -n "__fish_tako_server_using_subcommand sandbox-selftest" -l port-range -d 'Instance port range the sandbox lets the process connect to' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand sandbox-selftest" -l read -d 'A file beneath `<data-dir>/apps` to read, as a worker reads a static file' -r -F
complete -c tako-server -n "__fish_tako_server_using_subcommand sandbox-selftest" -l connect -d 'Try a TCP connect to 127.0.0.1:PORT, repeatable' -r
complete -c tako-server -n "__fish_tako_server_using_subcommand sandbox-selftest" -l exec -d 'After the report, execve /bin/true (the sandbox kills the process)'
complete -c tako-server -n "__fish_tako_server_using_subcommand sandbox-selftest" -s h -l help -d 'Print help'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and not __fish_seen_subcommand_from ctl sandbox-selftest help" -f -a "ctl" -d 'Talk to a running server over its management socket'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and not __fish_seen_subcommand_from ctl sandbox-selftest help" -f -a "sandbox-selftest" -d 'Apply the proxy worker\'s sandbox to this process, try what it must refuse and print the outcomes as JSON (tests and diagnosis)'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and not __fish_seen_subcommand_from ctl sandbox-selftest help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "status" -d 'One app: state, healthy instances, routes, instances and certificates'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "list" -d 'Every app: version, state, healthy/total instances, routes, uptime'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "routes" -d 'Every app\'s routes'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "server-info" -d 'The running server\'s settings, version, role and mode'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "deploy" -d 'Deploy a release: start its instances, health-check them, then switch traffic'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "stop" -d 'Stop an app\'s instances; it stays stopped across restarts until reload or deploy'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "delete" -d 'Stop an app and forget it (its release files stay on disk)'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "reload" -d 'Rolling restart of an app\'s instances (also starts a stopped app and applies secrets)'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "rollback" -d 'Deploy an earlier release of an app again'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "releases" -d 'An app\'s releases, newest first, the running one marked *'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "update-secrets" -d 'Merge secrets into an app\'s env (values from --secrets-file or --env, never argv); `reload` applies them'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "restart-workers" -d 'Rolling restart of the proxy workers, without dropping a request'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "processes" -d 'The server\'s processes (role, pid, user, state) and the app instances'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "reload-certs" -d 'Read <data-dir>/certs/ again'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "logs" -d 'Show an app\'s log (its output, from <data-dir>/apps/<app>/shared/logs/)'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "enter-upgrading" -d 'Enter upgrade mode: deploys and other changes are refused until exit-upgrading'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "exit-upgrading" -d 'Leave upgrade mode'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "upgrade" -d 'Replace the running server in place with the binary at its path, keeping the listeners'
complete -c tako-server -n "__fish_tako_server_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "raw" -d 'Send one raw JSON line (no hello) and print the raw response; `-` reads the line from stdin (for lines that carry secrets)'
