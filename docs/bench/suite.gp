set terminal pngcairo size 1500,1260 font 'sans,10'
set output 'docs/bench/suite.png'
set multiplot layout 3,2 title "pgbench suite 2026-12-01 on 2 cores (AMD EPYC), 23 GiB; pgsplit 0.1.0 (2266a5c); postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1); PgBouncer 1.18.0; "
set logscale x 2
set key top left
set grid
set xlabel 'clients'
set ylabel 'TPS'
set yrange [0:*]
set title "select-only simple"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 14388
16 48444
64 49755
e
1 8916
16 27809
64 28123
256 23924
e
1 7929
16 29373
64 30553
256 21403
e
1 10192
16 37246
64 30823
256 24334
e
1 9135
16 19336
64 15712
e
set title "select-only extended"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 13408
16 50529
64 47553
e
1 6940
16 26890
64 26455
256 24026
e
1 8261
16 28031
64 23940
256 21970
e
1 10537
16 35021
64 30950
256 26450
e
1 6562
16 8073
64 6813
e
set title "select-only prepared"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 18254
16 72085
64 66138
e
1 10778
16 37407
64 29674
256 26027
e
1 10573
16 34301
64 29931
256 22950
e
e
1 7725
16 11046
64 9213
e
set title "tpcb-like simple"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 2743
16 4444
64 3435
e
1 1198
16 2928
64 2402
256 2360
e
1 1011
16 2775
64 2320
256 2168
e
1 1267
16 3423
64 2783
256 2494
e
1 969
16 1991
64 1652
e
set title "select-only simple, new connection per transaction"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 412
16 458
64 493
e
1 3043
16 5361
64 5580
256 5318
e
1 3057
16 5935
64 5909
256 5578
e
1 3213
16 7183
64 6727
256 6762
e
1 140
16 164
64 150
e
unset multiplot
