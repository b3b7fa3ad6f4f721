set terminal pngcairo size 1500,1260 font 'sans,10'
set output '/tmp/suite/suite.png'
set multiplot layout 3,2 title "pgbench suite 2026-12-06 on 2 cores (AMD EPYC), 23 GiB; pgsplit 0.1.0 (42336ee); postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1); PgBouncer 1.18.0; pgpool-II version 4.3.5 (tamahomeboshi)"
set logscale x 2
set key top left
set grid
set xlabel 'clients'
set ylabel 'TPS'
set yrange [0:*]
set title "select-only simple"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 8660
16 32145
64 26604
e
1 5444
16 15174
64 13538
e
1 6009
16 19090
64 17009
e
1 6196
16 20314
64 18244
e
1 6700
16 21755
64 18319
e
1 5480
16 11511
64 8745
e
set title "select-only extended"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 7262
16 22275
64 20014
e
1 4639
16 13579
64 12311
e
1 4946
16 17269
64 14812
e
1 5176
16 17917
64 15617
e
1 5499
16 20534
64 14663
e
1 3556
16 5449
64 3980
e
set title "select-only prepared"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 11205
16 41750
64 30181
e
1 5960
16 16457
64 13965
e
1 7220
16 21457
64 18083
e
1 6930
16 24308
64 22459
e
e
1 4213
16 7493
64 6047
e
set title "tpcb-like simple"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 1121
16 2645
64 2195
e
1 707
16 1820
64 1725
e
1 810
16 1754
64 1706
e
1 705
16 1798
64 1581
e
1 754
16 1846
64 1796
e
1 644
16 1394
64 1029
e
set title "simple-update (-N) simple"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 1864
16 3824
64 3431
e
1 1166
16 2530
64 2674
e
1 1368
16 2973
64 2723
e
1 1332
16 3574
64 3012
e
1 1452
16 3616
64 3859
e
1 767
16 1790
64 1666
e
set title "select-only simple, new connection per transaction"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 320
16 366
64 372
e
1 2179
16 3819
64 3851
e
1 2008
16 4022
64 3837
e
1 2135
16 4541
64 3806
e
1 2231
16 4703
64 4203
e
1 111
16 125
64 131
e
unset multiplot
