set terminal pngcairo size 1500,1260 font 'sans,10'
set output 'docs/bench/suite.png'
set multiplot layout 3,2 title "pgbench suite 2026-12-01 on 2 cores (AMD EPYC), 23 GiB; pgsplit 0.1.0 (96e4882); postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1); PgBouncer 1.18.0; pgpool-II version 4.3.5 (tamahomeboshi)"
set logscale x 2
set key top left
set grid
set xlabel 'clients'
set ylabel 'TPS'
set yrange [0:*]
set title "select-only simple"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 14060
16 43621
64 39677
e
1 8282
16 26667
64 22868
256 21038
e
1 9399
16 31875
64 28142
256 25395
e
1 9884
16 33317
64 30368
256 25366
e
1 9785
16 34572
64 29527
256 23890
e
1 7892
16 16628
64 14833
e
set title "select-only extended"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 13841
16 47181
64 35824
e
1 7565
16 25047
64 20433
256 17760
e
1 8107
16 30316
64 27355
256 22551
e
1 9170
16 31966
64 27130
256 24891
e
1 9270
16 34533
64 27364
256 24282
e
1 5928
16 7079
64 5241
e
set title "select-only prepared"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 17614
16 66180
64 61869
e
1 10472
16 31910
64 29475
256 20300
e
1 10407
16 35588
64 30883
256 24867
e
1 10282
16 36416
64 29678
256 24121
e
e
1 7130
16 10771
64 8000
e
set title "tpcb-like simple"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 3235
16 4131
64 3099
e
1 1379
16 2701
64 2243
256 2173
e
1 1328
16 2761
64 2420
256 2079
e
1 1081
16 2857
64 2565
256 2126
e
1 1410
16 3162
64 2799
256 2222
e
1 961
16 1970
64 1523
e
set title "select-only simple, new connection per transaction"
plot '-' using 1:2 with linespoints title 'direct', '-' using 1:2 with linespoints title 'pgsplit', '-' using 1:2 with linespoints title 'pgsplit-primary', '-' using 1:2 with linespoints title 'pgsplit-primary-1-thread', '-' using 1:2 with linespoints title 'pgbouncer', '-' using 1:2 with linespoints title 'pgpool-ii'
1 355
16 439
64 459
e
1 2785
16 5739
64 5427
256 5281
e
1 2947
16 5929
64 5726
256 5577
e
1 3054
16 6558
64 6238
256 5767
e
1 3234
16 6934
64 6809
256 5927
e
1 130
16 158
64 149
e
unset multiplot
