from eval.wvs.run import main

main()
